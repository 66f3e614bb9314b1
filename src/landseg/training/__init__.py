"""Training: the run lifecycle (:mod:`.run`) and trainer assembly (:mod:`.trainer`)."""
