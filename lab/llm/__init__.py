"""The LLM side of the lab: loading models, the engine's explicit decode loop with the technique slots, the
draft/verify loop, the workloads' token ids, and the distillation of the shipped draft. Nothing is imported
here, so validation can read lab.llm.models without loading torch."""
