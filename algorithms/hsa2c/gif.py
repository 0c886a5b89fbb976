"""An animated GIF of one deterministic episode (``dpsgd evaluate RUN --gif FILE``).

Pillow writes the GIF (it comes with matplotlib; no video stack). The frames are the
environment's ``render_mode="rgb_array"`` screens - for Atari the full-colour 210x160 screen, not
the 84x84 grey input the network sees.
"""

from __future__ import annotations

import numpy as np

from .tracker import EVAL_SEED


class GifError(ValueError):
    """The GIF cannot be written (no Pillow, an environment that does not render): one line."""


def write_gif(frames, path: str, fps: float = 30.0, scale: int = 1) -> int:
    """Write ``frames`` (a sequence of H x W x 3 uint8 arrays) as an endlessly looping GIF.

    Returns the number of frames given; Pillow merges identical consecutive frames into one (their
    durations added), so the file may hold fewer. ``scale`` > 1 enlarges each frame (nearest neighbour).
    """
    try:
        from PIL import Image
    except ImportError:
        raise GifError("writing a GIF needs Pillow (pip install pillow; it comes with matplotlib)") from None
    frames = list(frames)
    if not frames:
        raise GifError("no frames to write")
    images = []
    for f in frames:
        a = np.asarray(f)
        if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
            raise GifError(f"frames must be H x W x 3 uint8 arrays, got {a.shape} {a.dtype}")
        im = Image.fromarray(np.ascontiguousarray(a[:, :, :3]))
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        # one adaptive palette per frame: Atari screens have few colours, so this is lossless there
        images.append(im.convert("P", palette=Image.ADAPTIVE, colors=256))
    duration = max(20, int(round(1000.0 / fps)))  # ms per frame; browsers clamp below 20 ms
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=True)
    return len(images)


def record_episode(agent, seed: int = EVAL_SEED, max_frames: int = 600, every: int = 2):
    """Screens of one deterministic episode of ``agent`` (an HSA2C): every ``every``-th agent
    step, at most ``max_frames`` of them. Returns ``(frames, episode_return, steps)``; the episode
    is played to its end (or the evaluation step limit) even when the frames stop earlier."""
    from . import envs as E
    from .agent import EVAL_MAX_STEPS

    try:
        env = E.make_env(agent.env_id, train=False, render_mode="rgb_array", **agent.env_kwargs)
    except E.EnvError as e:
        raise GifError(f"{agent.env_id} cannot render frames: {e}") from None
    frames = []
    try:
        obs, _ = env.reset(seed=int(seed))
        ret, steps, done = 0.0, 0, False
        while not done and steps < EVAL_MAX_STEPS:
            if steps % every == 0 and len(frames) < max_frames:
                frame = env.render()
                if frame is None:
                    raise GifError(f"{agent.env_id} rendered no frame (render_mode rgb_array unsupported)")
                frames.append(np.asarray(frame))
            a = agent.predict(np.asarray(obs))
            obs, r, term, trunc, _ = env.step(a.item() if np.ndim(a) == 0 else a)
            ret += float(r)
            steps += 1
            done = term or trunc
    finally:
        env.close()
    return frames, ret, steps
