"""The HTTP API's response models and the documents it serves."""
