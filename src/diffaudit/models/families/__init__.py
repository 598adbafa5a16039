"""One adapter subclass per model family (docs/models.md); `models.registry` chooses among them."""
