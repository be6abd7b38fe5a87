"""MuseV (TMElyralab/MuseV): the 3D UNet, the ReferenceNet, the IP-Adapter image projection and their loaders."""
