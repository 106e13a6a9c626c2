"""One import namespace the project owns: the repository folders the product card names are
installed as `kexport` (exporter/), `kexport.runtimes` (runtimes/) and `kexport.templates`
(templates/). Every sub-folder comes along (a new target package needs no line here); Node's
node_modules and caches never do."""

from setuptools import find_namespace_packages, setup

FOLDERS = {"kexport": "exporter", "kexport.runtimes": "runtimes", "kexport.templates": "templates"}
EXCLUDE = ["*node_modules*", "*__pycache__*", "*.egg-info*"]


def packages():
    out = []
    for name, folder in FOLDERS.items():
        out.append(name)
        out += [f"{name}.{p}" for p in find_namespace_packages(folder, exclude=EXCLUDE)
                if f"{name}.{p}" not in FOLDERS]
    return out


setup(packages=packages(), package_dir=dict(FOLDERS))
