"""The Gradio demo (``shelley serve``) and its export as a Hugging Face Space."""
