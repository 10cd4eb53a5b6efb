"""Videos: eval episodes as MP4 or GIF files, frame grids, and video summaries for TensorBoard and
Weights & Biases (docs/algorithm.md §10.8).

Frames are uint8 ``(3, H, W)`` (channel first, as the environments render them); a video is
``(T, 3, H, W)``. GIFs need nothing beyond imageio (Pillow); MP4 needs imageio-ffmpeg and falls back
to GIF, with one warning, where it is missing. Files are written atomically (temporary file in the
same folder, then ``os.replace``).

TensorBoard: ``SummaryWriter.add_video`` needs moviepy and its ``moviepy.editor`` module, which
moviepy 2 removed (with moviepy absent it prints "add_video needs package moviepy" and writes
nothing), so ``log_video_tb`` encodes the GIF itself and stores it the way TensorBoard stores videos:
an image summary whose encoded bytes are an animated GIF. ``log_video_wandb`` likewise hands wandb
GIF bytes (``wandb.Video`` on raw arrays also needs moviepy).
"""
from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_write

FORMATS = ("gif", "mp4")


# ------------------------------------------------------------------------------------- arrays
def to_uint8_video(frames: Any) -> np.ndarray:
    """A video as a uint8 numpy array (T, 3, H, W); accepts numpy arrays, torch tensors or a list
    of (3, H, W) frames. Float input is taken to be in [0, 1]."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([_numpy(frame) for frame in frames]) if frames else np.zeros((0, 3, 1, 1), np.uint8)
    frames = _numpy(frames)
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"a video must be (T, 3, H, W) or (T, 1, H, W), got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if frames.shape[1] == 1:
        frames = np.repeat(frames, 3, axis=1)
    return np.ascontiguousarray(frames)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def grid_shape(count: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding ``count`` tiles (or ``cols`` columns)."""
    cols = cols or max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols


def tile_images(images: Any, cols: int | None = None, pad: int = 0, pad_value: int = 0) -> np.ndarray:
    """Tile N images (N, C, H, W) into one (C, rows*H + ..., cols*W + ...) image, row by row;
    empty cells are ``pad_value``; ``pad`` pixels separate the tiles."""
    images = _numpy(images)
    count, channels, height, width = images.shape
    rows, cols = grid_shape(count, cols)
    out = np.full((channels, rows * height + (rows - 1) * pad, cols * width + (cols - 1) * pad), pad_value,
                  dtype=images.dtype)
    for index in range(count):
        r, c = divmod(index, cols)
        top, left = r * (height + pad), c * (width + pad)
        out[:, top:top + height, left:left + width] = images[index]
    return out


def tile_videos(videos: Any, cols: int | None = None, pad: int = 0, pad_value: int = 0) -> np.ndarray:
    """Tile N videos (N, T, C, H, W) into one video (T, C, rows*H, cols*W), one tile per video."""
    videos = _numpy(videos)
    return np.stack([tile_images(videos[:, t], cols, pad, pad_value) for t in range(videos.shape[1])])


# -------------------------------------------------------------------------------------- files
def encode_gif(frames: Any, fps: float = 15) -> bytes:
    """An animated, looping GIF of the video (T, 3, H, W) as bytes."""
    import imageio.v3 as iio
    frames = to_uint8_video(frames)
    if len(frames) == 0:
        raise ValueError("cannot encode a video with no frames")
    return iio.imwrite("<bytes>", frames.transpose(0, 2, 3, 1), extension=".gif",
                       duration=1000.0 / fps, loop=0)


def has_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_ffmpeg = False


def write_video(path: str | os.PathLike, frames: Any, fps: float = 15) -> Path:
    """Write the video (T, 3, H, W) to ``path`` (.gif or .mp4) atomically; returns the path
    written, which is ``path`` with a .gif suffix when MP4 was asked for but imageio-ffmpeg is
    missing (one warning on stderr per process)."""
    global _warned_no_ffmpeg
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"unknown video format '{path.suffix}' for {path}; valid: .gif, .mp4")
    frames = to_uint8_video(frames)
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    if suffix == "mp4" and not has_ffmpeg():
        if not _warned_no_ffmpeg:
            print("warning: imageio-ffmpeg is not installed; writing GIF videos instead of MP4 "
                  "(pip install imageio-ffmpeg)", file=sys.stderr)
            _warned_no_ffmpeg = True
        path, suffix = path.with_suffix(".gif"), "gif"
    if suffix == "gif":
        data = encode_gif(frames, fps)
    else:
        import imageio.v3 as iio
        height, width = frames.shape[2:]
        # H.264 with yuv420p wants even sizes: pad one black row/column where needed.
        frames = np.pad(frames, ((0, 0), (0, 0), (0, height % 2), (0, width % 2)))
        data = iio.imwrite("<bytes>", frames.transpose(0, 2, 3, 1), extension=".mp4", plugin="FFMPEG",
                           fps=fps, codec="libx264", macro_block_size=1)
    atomic_write_bytes(path, data)
    return path


def write_image(path: str | os.PathLike, image: Any) -> Path:
    """Write one uint8 image (3, H, W) as PNG (or any format Pillow knows by suffix), atomically."""
    import imageio.v3 as iio
    path = Path(path)
    image = to_uint8_video(_numpy(image)[None])[0]
    atomic_write_bytes(path, iio.imwrite("<bytes>", image.transpose(1, 2, 0), extension=path.suffix or ".png"))
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


class VideoRecorder:
    """Collects the frames of one episode and writes them as one video file.

    ``root_dir=None`` disables it entirely (every call is a no-op)::

        recorder = VideoRecorder(run_dir / "eval_video", fps=20)
        recorder.init(enabled=episode == 0)
        recorder.record(frame)                 # uint8 (3, H, W), once per step
        recorder.save(f"{frame_count}.mp4")    # relative names land in root_dir
    """

    def __init__(self, root_dir: str | os.PathLike | None, fps: float = 20, max_frames: int | None = None):
        self.root_dir = Path(root_dir) if root_dir is not None else None
        self.fps = fps
        self.max_frames = max_frames
        self.frames: list[np.ndarray] = []
        self.enabled = False

    def init(self, enabled: bool = True) -> None:
        self.frames = []
        self.enabled = bool(enabled) and self.root_dir is not None

    def record(self, frame: Any) -> None:
        if self.enabled and (self.max_frames is None or len(self.frames) < self.max_frames):
            self.frames.append(_numpy(frame).copy())

    def save(self, path: str | os.PathLike) -> Path | None:
        """Write the recorded frames (nothing when disabled or empty); returns the path written."""
        if not self.enabled or not self.frames:
            return None
        path = Path(path)
        if not path.is_absolute():
            path = self.root_dir / path
        written = write_video(path, self.frames, self.fps)
        self.frames = []
        return written


# ------------------------------------------------------------------------------ TensorBoard, wandb
def log_video_tb(writer, tag: str, frames: Any, step: int, fps: float = 15) -> None:
    """Add the video (T, 3, H, W) -- or N videos (N, T, 3, H, W), tiled side by side -- to a
    TensorBoard ``SummaryWriter`` as an animated-GIF image summary (what ``add_video`` writes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    frames = _as_single_video(frames)
    _, channels, height, width = frames.shape
    image = Summary.Image(height=height, width=width, colorspace=channels,
                          encoded_image_string=encode_gif(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def log_video_wandb(run, tag: str, frames: Any, fps: float = 15) -> None:
    """Log the video (T, 3, H, W) (or (N, T, 3, H, W), tiled) to a wandb run as a GIF; no moviepy needed."""
    import wandb
    video = wandb.Video(io.BytesIO(encode_gif(_as_single_video(frames), fps)), format="gif")
    run.log({tag: video})


def _as_single_video(frames: Any) -> np.ndarray:
    array = _numpy(frames) if not isinstance(frames, (list, tuple)) else frames
    if not isinstance(array, (list, tuple)) and array.ndim == 5:
        array = tile_videos(array, cols=array.shape[0])
    return to_uint8_video(array)
