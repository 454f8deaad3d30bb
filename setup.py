from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    "torch>=2.1", "torchvision", "hydra-core>=1.3", "omegaconf>=2.3", "safetensors", "numpy",
    "pillow", "tqdm",
]

setup(
    name="solo-sparse",
    version="0.1.0",
    description="Sparse, gated and cheaper self-supervised learning: plugins for solo-learn",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    # solo_sparse/ is the library; plugins/ installs as solo_sparse_plugins (never a bare `plugins`
    # package) and zoo/ as solo_sparse_zoo (manifest + weights as package data); hydra_plugins/ is a
    # real folder because Hydra discovers search-path plugins by scanning that namespace package.
    packages=find_packages(include=["solo_sparse", "solo_sparse.*"])
    # "hydra_plugins" itself is listed (a namespace package, no __init__.py) so that setuptools' default
    # editable mode maps the namespace to the real folder, where Hydra's pkgutil scan finds the plugin
    + ["solo_sparse_plugins", "solo_sparse_zoo", "hydra_plugins", "hydra_plugins.solo_sparse_searchpath"],
    package_dir={
        "solo_sparse_plugins": "plugins",
        "solo_sparse_zoo": "zoo",
    },
    package_data={"solo_sparse": ["configs/solo_sparse/*.yaml"],
                  "solo_sparse_zoo": ["manifest.json", "weights/*.safetensors", "configs/*.yaml",
                                      "configs/augmentations/*.yaml"]},
    include_package_data=True,
    install_requires=REQUIREMENTS,
    extras_require={
        "solo": ["lightning==2.1.2", "torchmetrics>=0.6.0,<0.12.0", "setuptools<81", "timm", "einops"],
        # the Lightning host (solo_sparse.lightning): Lightly 1.6.0 needs torch, torchvision, hydra-core, numpy, tqdm
        # and pytorch_lightning>=1.0.4; its examples import pytorch_lightning, pinned to the lightning release
        # solo-learn uses so one environment holds one Lightning version
        "lightly": ["lightly==1.6.0", "pytorch_lightning==2.1.2", "lightning==2.1.2", "setuptools<81"],
        "plots": ["matplotlib"],
        "test": ["pytest"],
    },
    entry_points={
        "console_scripts": ["solo-sparse=solo_sparse.tools.cli:main"],
        "solo_sparse.plugins": [
            "gmp = solo_sparse_plugins.gmp:GMP",
            "synccp = solo_sparse_plugins.synccp:SyncCP",
            "granet = solo_sparse_plugins.granet:GraNet",
            "sdclr = solo_sparse_plugins.sdclr:SDCLR",
            "imp = solo_sparse_plugins.imp:IMP",
            "dgnet_dual = solo_sparse_plugins.dgnet_dual:DGNetDual",
            "dgnet_gated = solo_sparse_plugins.dgnet_gated:DGNetGated",
            "cdg = solo_sparse_plugins.cdg:CDG",
            "cgnet = solo_sparse_plugins.cgnet:CGNet",
            "fbs = solo_sparse_plugins.fbs:FBS",
            "interloss = solo_sparse_plugins.interloss:InterLoss",
        ],
    },
    zip_safe=False,
)
