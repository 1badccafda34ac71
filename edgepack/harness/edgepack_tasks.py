"""What each output is, and the metrics that follow from its task.

Copied into every bundle beside ``edgepack_metrics.py`` (which imports it); standard
library and numpy only, Python 3.8 syntax, like the rest of the harness.
"""

from __future__ import annotations

import numpy as np

TASKS = ("classification", "regression", "embedding", "sequence", "ctc", "detection",
         "segmentation")

DETECTION_SCORE = 0.25  # a detection anchor counts when its best class score reaches this
CTC_BLANK = 0  # blank index of CTC outputs (PaddleOCR and most exports put it first)

# Output names that say what an output is, when no task was given.
_NAME_HINTS = (
    ("embedding", ("embed", "feature", "feat", "vector")),
    ("regression", ("box", "bbox", "landmark", "keypoint", "coord", "offset", "regress",
                    "depth", "loc")),
    ("classification", ("logit", "prob", "class", "softmax", "score", "pred", "label")),
)


class MetricError(ValueError):
    """Reference and candidate cannot be compared (missing output, shape mismatch)."""


def _hint(name):
    low = str(name).lower()
    for task, words in _NAME_HINTS:
        if any(w in low for w in words):
            return task
    return None


def _probabilities(a):
    """Rows that are probability vectors (softmax output): >= 0 and summing to 1."""
    rows = a.reshape(-1, a.shape[-1]).astype(np.float64)
    return bool(rows.size) and bool(np.all(rows >= -1e-6)) and bool(
        np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3))


def infer_task(name, ref, outputs=1):
    """The task of output ``name`` from its values, name and the model's output count.

    A float (N, C>=2) output is class scores when the model has no other output (or its
    name or values say so: "logits", "prob", softmax rows); beside other outputs an
    unnamed one is a regression head (boxes, landmarks), never argmax-judged by guess.
    A float (N, T, C) output of class scores is a sequence.
    """
    ref = np.asarray(ref)
    hint = _hint(name)
    if not np.issubdtype(ref.dtype, np.floating) or ref.ndim < 2 or ref.shape[-1] < 2:
        return "regression"
    if hint in ("embedding", "regression"):
        return hint
    scores = hint == "classification" or _probabilities(ref)
    if ref.ndim == 2:
        return "classification" if scores or outputs == 1 else "regression"
    if ref.ndim == 3 and scores:
        return "sequence"
    return "regression"


def resolve_tasks(reference, task=None):
    """{output: (task, inferred)} for every reference output.

    ``task``: None (infer each), a task name (every output), or {output: task} (the
    others inferred).
    """
    given = task if isinstance(task, dict) else {}
    out = {}
    for name, ref in reference.items():
        if name in given:
            out[name] = (given[name], False)
        elif isinstance(task, str):
            out[name] = (task, False)
        else:
            out[name] = (infer_task(name, ref, len(reference)), True)
    return out


def bind_labels(labels, tasks, labels_for=None):
    """{output: labels} from labels given as one array (bound to ``labels_for`` or to the
    only classification output) or as {output or "": labels}; MetricError when plain
    labels cannot be bound to exactly one output."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        labels = {"": labels}
    bound = {k: np.asarray(v).reshape(-1) for k, v in labels.items() if k}
    plain = labels.get("")
    if plain is None:
        return bound
    if labels_for is not None:
        if labels_for not in tasks:
            raise MetricError(f"labels_for names {labels_for!r}, which is not an output "
                              f"({', '.join(tasks)})")
        bound[labels_for] = np.asarray(plain).reshape(-1)
        return bound
    heads = [n for n, (t, _) in tasks.items() if t == "classification"]
    if len(heads) != 1:
        which = ("no output is class scores" if not heads else
                 f"{len(heads)} outputs are class scores ({', '.join(heads)})")
        raise MetricError(f"labels are given but {which}: bind them with labels_for: OUTPUT "
                          "(--labels-for) or a labels_<output> key in the .npz")
    bound[heads[0]] = np.asarray(plain).reshape(-1)
    return bound


# ---------------------------------------------------------------- task metrics


def retrieval(a, b, m):
    """Each sample's nearest other sample (cosine) is the same under both: N >= 3."""
    if len(a) < 3:
        return

    def nearest(x):
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        unit = x / np.where(norm == 0, 1.0, norm)
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        return np.argmax(sim, axis=1)

    m["retrieval_agreement"] = np.mean(nearest(a) == nearest(b))


def ctc_decode(steps):
    """Greedy CTC: per-step best class, repeats collapsed, blanks dropped."""
    out = []
    for row in steps:
        seq, last = [], None
        for k in row:
            if k != last and k != CTC_BLANK:
                seq.append(int(k))
            last = k
        out.append(tuple(seq))
    return out


def sequence(ref, cand, ctc, m):
    steps_ref = np.argmax(ref, axis=-1).reshape(len(ref), -1)
    steps_cand = np.argmax(cand, axis=-1).reshape(len(cand), -1)
    m["step_agreement"] = np.mean(steps_ref == steps_cand)
    if ctc:
        same = [x == y for x, y in zip(ctc_decode(steps_ref), ctc_decode(steps_cand))]  # noqa: B905
    else:
        same = np.all(steps_ref == steps_cand, axis=1)
    m["sequence_agreement"] = np.mean(same)


def _boxes(x):
    """(N, K, 4 + classes) from (N, K, D) or YOLO-style (N, D, K), K the larger axis."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise MetricError(f"detection outputs are (N, anchors, 4 + classes); got {list(x.shape)}")
    return x if x.shape[1] >= x.shape[2] else np.transpose(x, (0, 2, 1))


def _iou(p, q):
    """IoU of boxes (cx, cy, w, h) row by row."""
    p1, p2 = p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2
    q1, q2 = q[:, :2] - q[:, 2:] / 2, q[:, :2] + q[:, 2:] / 2
    inter = np.prod(np.clip(np.minimum(p2, q2) - np.maximum(p1, q1), 0, None), axis=1)
    union = np.prod(np.abs(p[:, 2:]), axis=1) + np.prod(np.abs(q[:, 2:]), axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def detection(ref, cand, m):
    r, c = _boxes(ref), _boxes(cand)
    if r.shape[2] < 5:
        raise MetricError("detection outputs need 4 box values and at least one score")
    agree, ious = [], []
    for i in range(len(r)):
        hit_r = r[i, :, 4:].max(axis=1) >= DETECTION_SCORE
        hit_c = c[i, :, 4:].max(axis=1) >= DETECTION_SCORE
        either = np.count_nonzero(hit_r | hit_c)
        both = hit_r & hit_c
        agree.append(np.count_nonzero(both) / either if either else 1.0)
        if np.any(both):
            ious.append(np.mean(_iou(r[i, both, :4], c[i, both, :4])))
    m["detection_agreement"] = np.mean(agree)
    if ious:
        m["box_iou_mean"] = np.mean(ious)


def _masks(x):
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] > 1:
        return np.argmax(x, axis=1)
    x = x.reshape(len(x), *x.shape[-2:]) if x.ndim >= 3 else x
    threshold = 0.5 if np.all((x >= 0) & (x <= 1)) else 0.0
    return (x > threshold).astype(np.int64)


def segmentation(ref, cand, m):
    mr, mc = _masks(ref), _masks(cand)
    ious = []
    for i in range(len(mr)):
        per = []
        for k in np.union1d(np.unique(mr[i]), np.unique(mc[i])):
            a, b = mr[i] == k, mc[i] == k
            per.append(np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b)))
        ious.append(np.mean(per) if per else 1.0)
    m["mask_iou"] = np.mean(ious)
