"""Text encoding: the umT5-XXL encoder, its tokenizer front end and the prompt-embedding cache."""
