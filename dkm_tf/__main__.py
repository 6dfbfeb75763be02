"""``python -m dkm_tf``: the ``dkm-tf`` command, the same flags, output and exit statuses.

For when the console script is not on ``PATH`` (``pip install --user`` without
``~/.local/bin`` there, a virtual environment not activated) or to choose the Python that
runs it: ``python3.11 -m dkm_tf compress``. Importing this module runs nothing.
"""

if __name__ == "__main__":
    from dkm_tf.cli import entry_point

    entry_point()
