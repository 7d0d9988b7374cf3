"""
Poor man's configurator, after nanoGPT. A script defines its config as plain globals,
then runs `exec(open(os.path.join(os.path.dirname(__file__), 'configurator.py')).read())`.
This overrides those globals from the command line, in order:

    python train_bc.py --task=pusht                 # loads config/pusht.py first, sets task='pusht'
    python train_bc.py --task=pusht_debug           # config/pusht_debug.py, whose own task = 'pusht' stays
    python train_bc.py config/pusht_long.py         # a config file: plain `key = value` lines
    python train_bc.py --batch_size=32 --lr_decay=False --out_dir=out/x

A value is parsed as a Python literal when it is one (3e-4, True, None, [1, 2]) and kept as
a string otherwise. Unlike nanoGPT, every key (from the command line or a config file) must
name an existing global, and its new value must have the global's type (an int is accepted
where a float is expected; any type where the default is None), so a typo fails loudly
instead of silently creating a new variable. The final config is printed and kept in the
dict `config` for logs and checkpoints.
"""
import ast as _ast
import builtins as _builtins
import difflib as _difflib
import os as _os
import sys as _sys


def _sim_tasks(repo_dir):
    """The simulator tasks (tasks.TASKS: a leaf module, no simulator is imported)."""
    _sys.path.insert(0, repo_dir)
    from tasks import TASKS
    return TASKS


def _configurator(g, argv):
    """Apply config files and --key=value overrides from argv to the globals dict g."""
    keys = [k for k, v in g.items() if not k.startswith('_')
            and isinstance(v, (bool, int, float, str, list, tuple, dict, type(None)))]
    repo_dir = _os.path.dirname(_os.path.abspath(g.get('__file__', 'configurator.py')))
    defaults = {k: g[k] for k in keys}  # types come from the script, not from a preset loaded before

    def fail(msg):
        raise SystemExit(f"configurator: {msg}")

    def check_and_set(key, value, source):
        if key not in keys:
            close = _difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            fail(f"unknown config key '{key}' (from {source}).{hint} "
                 f"Known keys: {', '.join(sorted(keys))}")
        default = defaults[key]
        if default is not None and value is not None:
            expected = type(default)
            ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if expected is tuple and isinstance(value, list):
                value, ok = tuple(value), True
            if not ok:
                fail(f"config key '{key}' (from {source}) expects {expected.__name__} "
                     f"(default {default!r}) but got {type(value).__name__} {value!r}")
        elif value is None and default is not None and not isinstance(default, str):
            fail(f"config key '{key}' (from {source}) expects {type(default).__name__}, got None")
        g[key] = value

    def load_file(path):
        """Run a config file and apply its globals; returns the keys it set."""
        if not _os.path.exists(path):
            fail(f"config file {path} not found")
        scope = {}
        try:
            exec(_builtins.compile(open(path).read(), path, 'exec'), scope)  # (scripts shadow compile)
        except SyntaxError as e:
            fail(f"config file {path} line {e.lineno}: {e.msg}. It must hold plain `key = value` lines")
        set_keys = []
        for k, v in scope.items():
            if not k.startswith('_') and not isinstance(v, type(_os)):
                check_and_set(k, v, path)
                set_keys.append(k)
        return set_keys

    # --task=NAME loads config/NAME.py before anything else, wherever it appears (training scripts;
    # a script like eval.py, where --task only names the simulator, sets _task_presets = False)
    for arg in argv:
        if arg.startswith('--task=') and g.get('_task_presets', True):
            task = arg.split('=', 1)[1]
            path = _os.path.join(repo_dir, 'config', f'{task}.py')
            if not _os.path.exists(path):
                presets = sorted(f[:-3] for f in _os.listdir(_os.path.join(repo_dir, 'config')) if f.endswith('.py'))
                fail(f"no preset config/{task}.py for --task={task}. Presets: {', '.join(presets)}")
            if 'task' not in load_file(path):  # a preset may name its simulator task (pusht_human -> 'pusht')
                check_and_set('task', task, '--task')
        if arg.startswith('--task=') and not g.get('_task_presets', True):  # here --task names a simulator task
            task = arg.split('=', 1)[1]
            path = _os.path.join(repo_dir, 'config', f'{task}.py')
            if _os.path.exists(path) and task not in _sim_tasks(repo_dir):  # a preset's name, not a task's
                scope = {}
                exec(_builtins.compile(open(path).read(), path, 'exec'), scope)
                sim = f": pass --task={scope['task']} (the task it trains)" if 'task' in scope else ""
                fail(f"--task={task} names a training preset (config/{task}.py, which train_bc.py loads), and this "
                     f"script takes no presets: here --task is a simulator task{sim}")
    for arg in argv:
        if arg.startswith('--task=') and g.get('_task_presets', True):
            continue
        if not arg.startswith('--'):
            load_file(arg)
            continue
        if '=' not in arg:
            fail(f"argument '{arg}' must look like --key=value")
        key, val = arg[2:].split('=', 1)
        try:
            value = _ast.literal_eval(val)
        except (SyntaxError, ValueError):
            value = {'true': True, 'false': False, 'none': None}.get(val.lower(), val)
        if isinstance(g.get(key), str) and not isinstance(value, str) and value is not None:
            value = val  # --out_dir=123 or --instruction=True stay strings
        check_and_set(key, value, f'--{key}')
    return {k: g[k] for k in keys}


# Ranges of the numeric keys the scripts share, checked once every override is in (before any data is loaded
# or recorded): key -> (test, what it must be). A script without the key skips its rule.
_RANGES = {
    'max_iters': (lambda v: v >= 1, '>= 1'), 'batch_size': (lambda v: v >= 1, '>= 1'),
    'gradient_accumulation_steps': (lambda v: v >= 1, '>= 1'), 'log_interval': (lambda v: v >= 1, '>= 1'),
    'ckpt_interval': (lambda v: v >= 1, '>= 1'), 'eval_interval': (lambda v: v >= 0, '>= 0 (0 = only at the end)'),
    'eval_episodes': (lambda v: v >= 0, '>= 0'), 'final_eval_episodes': (lambda v: v >= 0, '>= 0'),
    'dataset_episodes': (lambda v: v >= 1, '>= 1'), 'action_chunk_size': (lambda v: v >= 1, '>= 1'),
    'n_obs_steps': (lambda v: v >= 1, '>= 1'), 'augment_shift': (lambda v: v >= 0, '>= 0 pixels'),
    'learning_rate': (lambda v: 0 < v < float('inf'), 'a finite number > 0'),
    'min_lr': (lambda v: 0 <= v < float('inf'), 'a finite number >= 0'),
    'warmup_iters': (lambda v: v >= 0, '>= 0'), 'lr_decay_iters': (lambda v: v >= 0, '>= 0 (0 = max_iters)'),
    'weight_decay': (lambda v: 0 <= v < float('inf'), '>= 0'), 'max_grad_norm': (lambda v: v >= 0, '>= 0 (0 = off)'),
    'ema_decay': (lambda v: 0 <= v < 1, 'in [0, 1) (0 = off; 0.995 averages ~200 steps)'),
    'betas': (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), 'two numbers in [0, 1), e.g. (0.9, 0.95)'),
    'n_action_steps': (lambda v: v >= 0, '>= 1 (0 = the checkpoint\'s value in eval.py / deploy.py)'),
    # model sizes (every ManipulationVLAConfig count)
    **{k: (lambda v: v >= 1, '>= 1') for k in (
        'hidden_size', 'num_layers', 'num_heads', 'cnn_width', 'vision_grid', 'num_readout_tokens', 'max_text_tokens',
        'head_hidden_dim', 'denoiser_dim', 'diffusion_steps', 'diffusion_inference_steps', 'flow_steps', 'lora_r',
        'lora_alpha')},
    # DAgger, GAIL, multi-task, eval and deploy
    **{k: (lambda v: v >= 1, '>= 1') for k in (
        'dagger_iters', 'episodes_per_iter', 'train_iters', 'expert_episodes', 'steps_per_iter', 'ppo_epochs',
        'minibatch_size', 'hidden_dim', 'curriculum_interval', 'episodes', 'threads', 'num_workers')},
    'image_size': (lambda v: v >= 0, ">= 0 pixels (train_bc.py: 0 = the dataset's frame size)"),
    **{k: (lambda v: v >= 0, '>= 0') for k in (
        'bc_iters', 'ppo_iters', 'disc_steps', 'max_steps', 'eval_max_steps', 'videos', 'entropy_coef', 'value_coef',
        'bc_coef', 'grad_penalty', 'rate', 'max_step_change', 'inference_delay')},
    'rtc_max_weight': (lambda v: 0 < v < float('inf'), 'a finite number > 0 (the paper uses 5)'),
    **{k: (lambda v: 0 <= v <= 1, 'in [0, 1]') for k in ('beta', 'beta_decay', 'gamma', 'gae_lambda')},
    'clip_eps': (lambda v: 0 < v < 1, 'in (0, 1), e.g. 0.2'),
    'disc_learning_rate': (lambda v: 0 < v < float('inf'), 'a finite number > 0'),
    'watchdog_timeout': (lambda v: 0 <= v < float('inf'), 'a finite number of seconds >= 0 (0 = off)'),
}


def _check_ranges(cfg):
    """Refuse out-of-range values with the fix, and a device this machine does not have."""
    for key, (ok, must) in _RANGES.items():
        value = cfg.get(key)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (numeric or key == 'betas' and isinstance(value, (list, tuple))) and not ok(value):  # a script's own kind
            # of value (train_multitask's dataset_episodes is a dict per task) is that script's to check
            raise SystemExit(f"configurator: {key}={value!r} is out of range: it must be {must}; pass --{key}=...")
    if isinstance(cfg.get('min_lr'), float) and isinstance(cfg.get('learning_rate'), float) \
            and cfg['min_lr'] > cfg['learning_rate']:
        raise SystemExit(f"configurator: min_lr={cfg['min_lr']} exceeds learning_rate={cfg['learning_rate']}: "
                         f"the cosine schedule decays from learning_rate down to min_lr")
    device = str(cfg.get('device', 'cpu'))
    if device.startswith('cuda') or device == 'mps':
        import torch
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise SystemExit(f"configurator: --device={device} but torch sees no CUDA GPU on this machine "
                             f"(torch {torch.__version__}); use --device=cpu (or --device=auto)")
        if device.startswith('cuda:') and int(device[5:]) >= torch.cuda.device_count():
            raise SystemExit(f"configurator: --device={device} but only {torch.cuda.device_count()} CUDA GPU(s) "
                             f"are visible; use --device=cuda:0 or --device=cpu")
        if device == 'mps' and not torch.backends.mps.is_available():
            raise SystemExit("configurator: --device=mps but Apple's MPS backend is not available; use --device=cpu")


config = _configurator(globals(), _sys.argv[1:])
_check_ranges(config)
if int(_os.environ.get('RANK', 0)) == 0:
    print("config: " + ", ".join(f"{k}={v!r}" for k, v in config.items()))
