"""extraction stage: frame formula, frame -> phone rule, pooling, and the extraction loop."""

from phonefair.extraction.frames import (FRAME_RULE, POOLINGS, FrameGrid, num_frames, phone_frame_ranges,
                                         phone_frames, pool, pool_layers, pooling_ranges)
from phonefair.extraction.extract import extract  # noqa: E402  (binds the function over the submodule name)

__all__ = ["FRAME_RULE", "POOLINGS", "FrameGrid", "num_frames", "phone_frame_ranges", "phone_frames", "pool",
           "pool_layers", "pooling_ranges", "extract"]
