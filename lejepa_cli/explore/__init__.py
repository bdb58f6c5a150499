"""`lejepa explore`: what a frozen encoder learned, as one offline page and a few CSVs.

- `neighbours`: chunked cosine top-k, near-duplicate pairs, kNN density (outliers);
- `map`: all embeddings in 2-D (PCA, or UMAP with the `explore` extra);
- `patches`: the first principal components of patch tokens as an RGB picture;
- `thumbs`: small inline JPEG thumbnails;
- `page`: the self-contained HTML;
- `explore`: the command's engine, and the neighbour gallery of a run's report.
"""
