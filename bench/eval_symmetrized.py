"""
eval.py with the policy made exactly mirror-equivariant at test time: each chunk is the mean of the policy's chunk
for the frame and the reflection of its chunk for the reflected frame (the task's mirror_line, tasks.py). A policy
trained with --augment_mirror=True has seen both; averaging the two is a two-member ensemble that costs a second
forward pass per chunk. Measures whether that helps (RESULTS.md, issue 15). Takes eval.py's arguments.

    python bench/eval_symmetrized.py --ckpt=out/pusht_human_mirror --episodes=100 --start_seed=100000 --videos=0
"""
import os
import runpy
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import policy  # noqa: E402  (eval.py runs its policies through policy.VLAPolicy)
import envs  # noqa: E402

LINE = envs.TASKS['pusht']['mirror_line']
predict_chunk = policy.VLAPolicy.predict_chunk


def symmetrized(self, images, proprio, guide=None):
    """Mean of the chunk for the frame and the reflected chunk for the reflected frame (data.mirror_batch, p=1).
    No real-time chunking: a guide is for one frame's chunk, not its reflection's."""
    if guide is not None:
        raise ValueError("eval_symmetrized.py averages two chunks: run it without --chunk_join=rtc")
    a = predict_chunk(self, images, proprio)
    m = data.mirror_batch({'images': images, 'proprio': proprio}, LINE, p=1.0)
    b = predict_chunk(self, m['images'], m['proprio'])
    b = data.mirror_batch({'images': images, 'action': torch.from_numpy(b)[None]}, LINE, p=1.0)['action'][0].numpy()
    return (a + b) / 2


if __name__ == '__main__':
    policy.VLAPolicy.predict_chunk = symmetrized
    sys.argv = [os.path.join(ROOT, 'eval.py')] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name='__main__')
