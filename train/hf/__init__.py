"""kfm.train.hf: Hugging Face format, both ways.

``convert`` (the key tables and config conversion for Llama, Qwen2, Qwen3 and EXAONE 4), ``load`` (reading an
HF directory into a kfm model), ``export`` (a checkpoint to an HF directory with tokenizer and generation
config), ``import_checkpoint`` (an HF directory to a kfm checkpoint) and ``model_card``.
"""
