"""GPQ on embeddings (`backbone="mlp"`) against faiss' PQ on the same vectors: with the class in a
few dimensions beside high-variance nuisance ones, PQ (which spends its codes on variance) retrieves
near chance, and GPQ's semi-supervised objective, from 50 labels per class and 2,000 unlabeled
vectors, learns codes that retrieve by class. Runs on TensorFlow and JAX (`backends`)."""

import keras
import numpy as np
import pytest
from data_fakes import signal_embeddings
from original_retrieval import cat_apcal

from gpq_keras.config import GPQConfig
from gpq_keras.data import train_input
from gpq_keras.data.split import Split
from gpq_keras.model import GPQ
from gpq_keras.retrieval import PQIndex, import_faiss

pytestmark = [pytest.mark.backends, pytest.mark.large]
BITS, CODEWORDS = 16, 16  # M = 4 codebooks of 16 codewords: 16-bit codes for both
MARGIN = 0.2  # GPQ's mAP over PQ's, at least (measured: about 0.49 against 0.10)


def reference_map(ranking, y_query, y_db):
    """The original's mAP over the whole ranked database (`cat_apcal`, NumPy float64)."""
    relevant = (y_query[:, None] == y_db[None, :]).astype(np.int64)
    return cat_apcal(relevant, np.asarray(ranking).T, len(y_db))[0]


@pytest.fixture(scope="module")
def vectors():
    return signal_embeddings(seed=0)


def test_gpq_on_an_mlp_beats_faiss_pq_on_the_same_vectors(vectors):
    x_l, y_l, x_u, y_u, x_q, y_q = vectors
    faiss = import_faiss()
    pq = faiss.IndexPQ(x_u.shape[1], BITS // 4, 4)
    pq.train(np.concatenate([x_l, x_u]))  # unsupervised: every training vector
    pq.add(x_u)
    _, pq_ranking = pq.search(x_q, len(x_u))
    pq_map = reference_map(pq_ranking, y_q, y_u)

    split = Split(x_q, y_q, x_u, y_u, x_labeled=x_l, y_labeled=y_l, name="signal")
    assert split.takes_vectors
    config = GPQConfig(
        num_subspaces=BITS // 4,
        num_codewords=CODEWORDS,
        subspace_dim=12,
        num_classes=10,
        input_dim=x_u.shape[1],
        learning_rate=1e-2,
    )
    keras.utils.set_random_seed(0)
    model = GPQ(config, backbone="mlp")
    model.compile()
    dataset, _ = train_input(split, batch_size=100, seed=0)
    model.fit(dataset, steps_per_epoch=300, epochs=1, verbose=0)

    index = PQIndex.from_model(model)
    index.add(model.encode(x_u))
    _, ids = index.search(model.encode(x_q), len(x_u))
    gpq_map = reference_map(ids, y_q, y_u)
    assert pq_map < 0.2, f"the nuisance dimensions should defeat PQ (mAP {pq_map:.3f})"
    assert gpq_map > pq_map + MARGIN, f"GPQ mAP {gpq_map:.3f}, faiss PQ mAP {pq_map:.3f}"
