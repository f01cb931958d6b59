"""Everything that owns or computes tensors for the engine: the model runner (static KV
slots, batched backbone), attention glue, the frame sampler (lm_head + depth loop), the
per-row sampler, and captured steps (device graphs / torch.compile)."""
