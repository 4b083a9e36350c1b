"""The native batch loops (pilotif/wg/fastpath/_batch_loops.c); everything else is in
pyproject.toml. The extension is optional: without a compiler or OpenSSL's headers the
build goes on and pilotif does the same in Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pilotif.wg.fastpath._batch_loops",
            sources=["pilotif/wg/fastpath/_batch_loops.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
