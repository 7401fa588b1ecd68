"""Independent NumPy float64 re-statements of GPQ's layers and losses, written loop-by-sub-space
like the paper."""

import numpy as np


def intra_norm(x, m):
    parts = np.split(np.asarray(x, np.float64), m, axis=1)
    return np.concatenate(
        [p / np.sqrt(np.maximum((p**2).sum(1, keepdims=True), 1e-12)) for p in parts], 1
    )


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def soft_assignment(codebook, x, m, alpha):
    """SA(Z, x) with a Python loop over sub-spaces."""
    xs, zs = (
        np.split(np.asarray(x, np.float64), m, 1),
        np.split(np.asarray(codebook, np.float64), m, 1),
    )
    out = []
    for xm, zm in zip(xs, zs):
        weights = softmax(-alpha * (1.0 - xm @ zm.T), axis=1)
        out.append(weights @ zm)
    return intra_norm(np.concatenate(out, 1), m)


def classifier_logits(f, prototypes, m, beta):
    fs, ps = (
        np.split(beta * np.asarray(f, np.float64), m, 1),
        np.split(beta * np.asarray(prototypes, np.float64), m, 1),
    )
    return np.mean([fm @ pm.T for fm, pm in zip(fs, ps)], axis=0)


def l2n(x):
    return x / np.sqrt(np.maximum((x**2).sum(1, keepdims=True), 1e-12))


def cross_entropy(targets, logits):
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return np.mean(-(targets * logp).sum(1))


def npq_loss(y, f, q, m, reg=0.002):
    y, f, q = (np.asarray(a, np.float64) for a in (y, f, q))
    s = y @ y.T
    s = s / np.maximum(s.sum(1, keepdims=True), 1e-12)
    l2 = 0.25 * reg * ((f**2).sum(1).mean() + (q**2).sum(1).mean())
    return cross_entropy(s, m * l2n(f) @ l2n(q).T) + l2


def cls_loss(y, logits):
    y = np.asarray(y, np.float64)
    return cross_entropy(y / y.sum(1, keepdims=True), np.asarray(logits, np.float64))


def entropy_loss(logits):
    p = softmax(np.asarray(logits, np.float64), 1)
    return np.mean((p * np.log(p + 1e-5)).sum(1))
