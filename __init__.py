"""dissect-study: concept-based dissection of mammography vision models.

The repository root is the `dissect_study` package (see pyproject.toml): the study
language lives in `dsl/`, everything that executes in `engine/`.
"""

__version__ = "0.1.0"
