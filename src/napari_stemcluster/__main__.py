"""``python -m napari_stemcluster``: the ``stemcluster`` command line."""

if __name__ == "__main__":
    from ._signals import run

    run()
