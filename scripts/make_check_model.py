"""A small random-weight Llama with the real SmolLM2 tokenizer, for GPU checks where real weights cannot travel.
    python scripts/make_check_model.py TOKENIZER_DIR OUT_DIR"""
import sys

import torch
import transformers as tf

tokenizer = tf.AutoTokenizer.from_pretrained(sys.argv[1])
torch.manual_seed(0)
config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id)
model = tf.AutoModelForCausalLM.from_config(config)
model.save_pretrained(sys.argv[2])
tokenizer.save_pretrained(sys.argv[2])
print("saved", sys.argv[2], sum(p.numel() for p in model.parameters()), "parameters")
