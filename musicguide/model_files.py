"""The two files of a model folder, named in one place that imports nothing heavy (the registry
lists models without loading torch; models.folder reads and writes them)."""

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
