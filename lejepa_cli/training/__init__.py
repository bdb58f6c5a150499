"""The training loop's parts: the callback interface trackers and other observers implement."""
