"""The pack's one menu root, by what a user is doing; node ids stay as they were so saved graphs load."""

ROOT = "Ortho-Hydra"
APPLY = f"{ROOT}/apply"  # load adapters (files or a bank of LoRAs) and patch the model
MIXER = f"{ROOT}/mixer"  # choose, blend and schedule experts
STYLE = f"{ROOT}/style"  # style profiles and style-folder datasets
TRAIN = f"{ROOT}/train"  # the trainer and what goes with it
TOOLS = f"{ROOT}/tools"  # bake, merge, transfer, inspect
DEMO = f"{ROOT}/demo"  # the toy worlds' helpers
