"""The native batch loop (pilotif/overlay/_batch_aead.c); everything else is in
pyproject.toml. The extension is optional: without a compiler or OpenSSL's headers the
build goes on and pilotif uses the same loop in Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pilotif.overlay._batch_aead",
            sources=["pilotif/overlay/_batch_aead.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
