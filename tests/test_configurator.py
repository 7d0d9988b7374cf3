"""configurator.py: overrides reach the script's globals; typos and wrong types fail loudly."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config(argv, script_globals=None):
    """Exec configurator.py against a fresh globals dict as a script would."""
    g = {'__file__': os.path.join(REPO, 'train_fake.py'), 'learning_rate': 3e-4, 'batch_size': 64,
         'out_dir': 'out', 'task': 'pusht', 'compile': False, 'temporal_ensemble_coeff': None,
         'betas': (0.9, 0.95)}
    g.update(script_globals or {})
    old = sys.argv
    sys.argv = ['train_fake.py'] + argv
    try:
        exec(open(os.path.join(REPO, 'configurator.py')).read(), g)
    finally:
        sys.argv = old
    return g


def test_overrides_and_literal_parsing():
    g = run_config(['--learning_rate=1e-3', '--batch_size=8', '--out_dir=out/x=y', '--compile=True',
                    '--temporal_ensemble_coeff=0.01', '--betas=[0.8, 0.9]'])
    assert g['learning_rate'] == 1e-3 and g['batch_size'] == 8
    assert g['out_dir'] == 'out/x=y'  # split on the first '=' only
    assert g['compile'] is True and g['temporal_ensemble_coeff'] == 0.01 and g['betas'] == (0.8, 0.9)
    assert g['config']['batch_size'] == 8


def test_int_accepted_for_float_and_lowercase_bool():
    g = run_config(['--learning_rate=1', '--compile=false'])
    assert isinstance(g['learning_rate'], float) and g['compile'] is False


def test_unknown_key_lists_close_matches():
    with pytest.raises(SystemExit, match=r"unknown config key 'learning_rat'.*Did you mean: learning_rate"):
        run_config(['--learning_rat=1e-3'])


def test_wrong_type_names_expected_type():
    with pytest.raises(SystemExit, match=r"'batch_size'.*expects int"):
        run_config(['--batch_size=0.5'])
    with pytest.raises(SystemExit, match=r"'compile'.*expects bool"):
        run_config(['--compile=3'])


def test_config_file_is_checked(tmp_path):
    good = tmp_path / 'good.py'
    good.write_text("batch_size = 4\nlearning_rate = 2e-4\n")
    g = run_config([str(good), '--batch_size=5'])
    assert g['batch_size'] == 5 and g['learning_rate'] == 2e-4
    bad = tmp_path / 'bad.py'
    bad.write_text("batchsize = 4\n")
    with pytest.raises(SystemExit, match=r"unknown config key 'batchsize'.*batch_size"):
        run_config([str(bad)])


def test_task_loads_preset_first():
    """--task=pusht loads config/pusht.py, and later flags still win over the preset."""
    g = run_config(['--batch_size=3', '--task=pusht'], script_globals=_train_bc_globals())
    assert g['task'] == 'pusht' and g['batch_size'] == 3
    with pytest.raises(SystemExit, match=r"no preset config/nosuchtask.py"):
        run_config(['--task=nosuchtask'])


def test_flag_may_reset_a_preset_value_to_none():
    """config/aloha_transfer_cube.py sets temporal_ensemble_coeff=0.01; the script's default is None, so
    --temporal_ensemble_coeff=None (ensembling off) must pass: types come from the script, not the preset."""
    g = run_config(['--task=aloha_transfer_cube', '--temporal_ensemble_coeff=None'], script_globals=_train_bc_globals())
    assert g['temporal_ensemble_coeff'] is None and g['action_head_type'] == 'transformer'


def _train_bc_globals():
    """The config globals of train_bc.py, read without running it (everything above the configurator line)."""
    src = open(os.path.join(REPO, 'train_bc.py')).read()
    head = src.split("exec(open(")[0]
    g = {'__file__': os.path.join(REPO, 'train_bc.py')}
    exec(head, g)
    return {k: v for k, v in g.items() if not k.startswith('__')}


def test_every_preset_matches_train_bc_keys():
    """Each config/*.py preset only sets keys train_bc.py knows, with the right types."""
    for f in sorted(os.listdir(os.path.join(REPO, 'config'))):
        if f.endswith('.py'):
            run_config([os.path.join(REPO, 'config', f)], script_globals=_train_bc_globals())


def test_cli_error_exits_nonzero():
    r = subprocess.run([sys.executable, 'train_bc.py', '--max_iter=3'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "Did you mean: max_iters" in r.stderr


def test_a_preset_name_is_refused_where_task_names_the_simulator():
    """eval.py, deploy.py and the other stages take a simulator task for --task, not a train_bc.py preset: a preset's
    name fails with the task it trains, instead of 'unknown task' later; a simulator task passes."""
    with pytest.raises(SystemExit, match=r"--task=pusht_human names a training preset .* pass --task=pusht"):
        run_config(['--task=pusht_human'], script_globals={'_task_presets': False})
    assert run_config(['--task=lift'], script_globals={'_task_presets': False})['task'] == 'lift'
