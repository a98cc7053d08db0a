"""connecto: connectomics machine learning with every experiment kept in MongoDB."""

__version__ = "0.1.0"


class ConnectoError(Exception):
    """An error the user can act on: printed as one line, without a traceback."""
