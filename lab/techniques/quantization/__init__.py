"""Weight quantization techniques (the weights slot)."""
