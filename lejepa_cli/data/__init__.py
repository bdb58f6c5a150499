"""The data engine: find images, decode them safely, cut multi-crop views, batch them.

- `scan`: `scan_folder(root) -> ImageIndex`, paths in compact arrays.
- `decode`: `load_rgb(path)`, any file to upright RGB or a `DecodeError` with its reason.
- `multicrop`: `MultiCrop(MultiCropConfig)`, the recipe's views as uint8 tensors; `normalize`.
- `dataset`: `MultiCropDataset`, `collate_multicrop`.
- `folder_stats`: `inspect_folder(root) -> FolderReport` for `lejepa inspect`.
- `readers`: `read_raw(path) -> (H, W, C)` at stored precision (16-bit, float, TIFF, .npy, FITS,
  DICOM); `read_header(path)`.
- `intensity`: `IntensityMap` (dataset, per-image, asinh): raw values to 0-1 per channel.
- `channels`: the folder's channel count and the grey-to-N rule.
- `pixels`: `plan(index) -> PixelSpec | None`, a run's raw-file contract (None: 8-bit RGB);
  `resolve_config(cfg, index)`; `EvalImages`, the eval view of such runs.
- `raw_stats`: `describe_pixels(index)`, inspect's section for raw data.

Submodules are imported directly (`from lejepa_cli.data.scan import scan_folder`) so that
using the scanner does not import torch.
"""
