"""KV-cache compression: eviction presses (kvpress semantics), mixed precision and quantized KV."""
