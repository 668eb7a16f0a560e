"""The model pass: a reranker (LM + template + adapter), the mixed pass over several
adapters, the one scorer and fusion with the first stage."""
