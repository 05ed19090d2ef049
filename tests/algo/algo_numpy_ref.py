"""Shared numpy references for the algo tests (plain python loops, float64)."""


def np_agg(loss_mat, mask, mode, horizon=None):
    """Reference: python loops over rows, float64."""
    rows_sum, rows_mean, n_tok = [], [], 0
    total = 0.0
    for b in range(loss_mat.shape[0]):
        vals = [float(loss_mat[b, t]) for t in range(loss_mat.shape[1]) if mask[b, t]]
        n_tok += len(vals)
        total += sum(vals)
        if vals:
            rows_sum.append(sum(vals))
            rows_mean.append(sum(vals) / len(vals))
    if mode == "token-mean":
        return total / n_tok if n_tok else 0.0
    if not rows_sum:
        return 0.0
    if mode == "seq-mean-token-sum":
        return sum(rows_sum) / len(rows_sum)
    if mode == "seq-mean-token-mean":
        return sum(rows_mean) / len(rows_mean)
    if mode == "seq-mean-token-sum-norm":
        h = loss_mat.shape[1] if horizon is None else horizon
        return sum(rows_sum) / len(rows_sum) / h
    raise ValueError(mode)
