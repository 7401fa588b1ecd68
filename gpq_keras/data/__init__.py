"""Data sources and input pipelines."""

from gpq_keras.data.pipeline import eval_dataset, normalize, train_dataset
from gpq_keras.data.split import Split, protocol_split
