"""
eval.py with every live frame passed through yuv420p and back before the policy sees it: the pixel format of
video datasets (LeRobot's mp4 frames; lerobot/pusht is h264 yuv420p), whose 2x2 chroma subsampling blurs
colored edges that the simulator renders sharp. Measures whether that difference in the frames matters
(RESULTS.md, issue 15: it did not, on PushT). Takes eval.py's arguments.

    python bench/eval_yuv420.py --ckpt=out/pusht_human --episodes=50 --start_seed=100000 --videos=0
"""
import os
import runpy
import sys

import av
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402  (deploy.py, which eval.py runs the policy through, calls data.frame_to_model_input)

to_model_input = data.frame_to_model_input


def through_yuv420(frame, image_keys, *args, **kwargs):
    """The frame's cameras RGB -> yuv420p -> RGB (libswscale, as a video decoder's output is converted)."""
    frame = dict(frame)
    for key in image_keys:
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[key]), format='rgb24')
        frame[key] = rgb.reformat(format='yuv420p').reformat(format='rgb24').to_ndarray()
    return to_model_input(frame, image_keys, *args, **kwargs)


if __name__ == '__main__':
    data.frame_to_model_input = through_yuv420
    sys.argv = [os.path.join(ROOT, 'eval.py')] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name='__main__')
