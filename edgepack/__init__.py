"""edgepack: convert, quantize and verify one trained model for edge targets."""

__version__ = "0.1.0"
