"""The pretraining run's parts; `lejepa_cli.train.pretrain` calls them in order.

plan (auto values, sizes, held-out split, resume position) -> data (images, dataset, loaders)
-> build (the model) -> optim (AdamW, Schedule) -> restore -> step (TrainStep) -> loop
(EpochLoop), which tells the callbacks (callbacks.py): logs (metrics.jsonl, train.log), the
keeper (checkpoints), scoring (the held-out score), the trackers, the terminal progress.
"""
