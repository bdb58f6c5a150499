"""All embeddings in two dimensions: PCA (always there) or UMAP (the `explore` extra)."""

from __future__ import annotations

import numpy as np

from lejepa_cli.errors import UsageError

METHODS = ("auto", "pca", "umap")
UMAP_INSTALL = "pip install 'lejepa-cli[explore]'"


def resolve_method(method: str) -> str:
    """'auto' -> 'umap' when umap-learn is installed, else 'pca'; 'umap' without it is refused."""
    if method not in METHODS:
        raise UsageError(f"--map takes auto, pca or umap, not {method!r}")
    if method == "pca":
        return "pca"
    if _import_umap() is None:
        if method == "umap":
            raise UsageError(f"--map umap needs umap-learn: {UMAP_INSTALL}, or use --map pca")
        return "pca"
    return "umap"


def _import_umap():
    try:
        import umap
    except ImportError:
        return None
    return umap


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """(N, F) -> (N, 2): the centred embeddings projected on their first two principal axes
    (numpy SVD; each axis' sign as the SVD gives it)."""
    x = np.asarray(embeddings, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)  # (N, F)
    if len(x) == 0:
        return np.zeros((0, 2), np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt (min(N, F), F)
    coords = centred @ vt[:2].T  # (N, <=2)
    if coords.shape[1] < 2:  # one image or one dimension: the missing axis is 0
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords.astype(np.float32)


def umap_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, F) -> (N, 2) with UMAP on cosine distance (seeded, hence single-threaded)."""
    umap = _import_umap()
    if umap is None:
        raise UsageError(f"--map umap needs umap-learn: {UMAP_INSTALL}, or use --map pca")
    n = len(embeddings)
    if n < 4:  # UMAP needs a few neighbours; so few points are laid out by PCA
        return pca_2d(embeddings)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(15, n - 1),
        metric="cosine",
        random_state=seed,
        n_jobs=1,  # a seed makes UMAP single-threaded anyway; saying so avoids its warning
        init="random",
    )
    return np.asarray(reducer.fit_transform(np.asarray(embeddings, np.float32)), np.float32)


def layout(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates by a resolved method ('pca' or 'umap')."""
    return umap_2d(embeddings, seed) if method == "umap" else pca_2d(embeddings)
