"""Labels and the relevance they define, the one place retrieval evaluation and data files take it
from.

Labels are int class ids (N,) (relevant: the same class) or multi-hot (N, classes) (relevant: at
least one shared class), as in CIFAR-10 and NUS-WIDE.
"""

import numpy as np


def check_label_pair(query_labels, db_labels):
    """Query and database labels of one kind, ready for `relevance`: int ids as they are, multi-hot
    as float32 0/1 (Q, classes) and (N, classes). A ValueError for anything else."""
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    if query_labels.ndim not in (1, 2) or query_labels.ndim != db_labels.ndim:
        raise ValueError(
            "labels must both be int class ids (N,) or both multi-hot (N, classes). "
            f"Received shapes: query {query_labels.shape}, database {db_labels.shape}"
        )
    if query_labels.ndim == 2:
        if query_labels.shape[1] != db_labels.shape[1]:
            raise ValueError(
                f"multi-hot labels must have the same number of classes. Received shapes: "
                f"query {query_labels.shape}, database {db_labels.shape}"
            )
        return (query_labels != 0).astype(np.float32), (db_labels != 0).astype(np.float32)
    return query_labels, db_labels


def relevance(query_labels, db_labels):
    """Relevance of every database item to every query -> bool (Q, N): equal class ids, or multi-hot
    labels sharing at least one class.

    ```python
    relevance([0, 2], [0, 1, 2])  # [[True, False, False], [False, False, True]]
    ```
    """
    query_labels, db_labels = check_label_pair(query_labels, db_labels)
    if query_labels.ndim == 1:
        return query_labels[:, None] == db_labels[None, :]
    return (query_labels @ db_labels.T) > 0
