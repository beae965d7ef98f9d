"""LIFT: tabular classification and regression as language (Dinh et al., 2022)."""
