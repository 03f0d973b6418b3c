"""Jinja2 templates of gnhub's model cards (installed as gnhub.model_cards); examples/ holds rendered cards."""

__all__ = []
