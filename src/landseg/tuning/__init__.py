"""``landseg tune``: a hyper-parameter search whose every trial is a cross-validation job."""
