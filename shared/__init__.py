"""The finished code of every chapter of the course, one module per concept.

shared.device          picking cuda, mps or cpu, timing work on it (all chapters)
shared.data            downloading, verifying and caching data sets and weights (all chapters)
shared.cli             the scripts' shared options, validators, help, one-line errors (all chapters)
shared.tokenizers      regex tokenizers, byte-pair encoding from scratch, GPT-2's tokenizer (ch02)
shared.dataset         sliding-window dataset and data loader (ch02)
shared.attention       self-attention up to multi-head attention (ch03)
shared.gpt             the GPT model and simple generation (ch04)
shared.attention_ops   attention's steps written once: heads, masks, cache, attend (ch04 bonus)
shared.fast_attention  fast paths of multi-head attention: fused kernels, KV cache (ch04 bonus)
shared.fused_kernels   use_fused_kernels: GPTModel's layers on PyTorch's fused kernels (ch04 bonus)
shared.kv_cache        GPTModel with a key/value cache for generation (ch04 bonus)
shared.flops           FLOPs of GPTModel by part, a training step's, the machine's peak (ch04 bonus)
shared.memory          memory of training and generating by part, the peak, measured (ch04 bonus)
shared.pretraining     losses, the book's training loop, decoding, checkpoints (ch05)
shared.gpt2_weights    loading OpenAI's GPT-2 weights (ch05)
shared.speed           training loop options: bf16, compile, accumulation, schedule, clipping (ch05)
shared.distributed     DistributedDataParallel under torchrun (ch05)
shared.corpus          corpora larger than memory: memory-mapped token files (ch05)
shared.classification  finetuning for spam classification (ch06)
shared.instruction     instruction finetuning and scoring responses (ch07)
shared.lora            low-rank adaptation (LoRA): LoRALinear, add_lora, merge_lora (ch06 bonus, ch07)
shared.preference      preference tuning with DPO: pairs, log-probabilities, loss, training (ch07)
shared.rope, shared.open_models, shared.llama3, shared.qwen3: RoPE; Llama 3.2 and Qwen3 from scratch (ch05 bonus)
shared.figures         the course's own diagrams, drawn from code (all chapters)
shared.practice        one-line checks of a learner's own code, for the practice notebooks (ch02-ch07)
shared.apps            the browser apps' loader, token streaming and page parts (ch05-ch07; needs [apps])
"""

# Where the course lives: the Colab badges, the notebooks' install cell and the setup guides
# use this address (tests/test_repo.py checks every notebook and document against it).
REPOSITORY = "https://github.com/llm-from-scratch-course/llm-from-scratch"
