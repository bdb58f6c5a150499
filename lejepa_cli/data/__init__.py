"""The data engine: find images, decode them safely, cut multi-crop views, batch them.

- `scan`: `scan_folder(root) -> ImageIndex`, paths in compact arrays.
- `decode`: `load_rgb(path)`, any file to upright RGB or a `DecodeError` with its reason.
- `multicrop`: `MultiCrop(MultiCropConfig)`, the recipe's views as uint8 tensors; `normalize`.
- `dataset`: `MultiCropDataset`, `collate_multicrop`.
- `folder_stats`: `inspect_folder(root) -> FolderReport` for `lejepa inspect`.

Submodules are imported directly (`from lejepa_cli.data.scan import scan_folder`) so that
using the scanner does not import torch.
"""
