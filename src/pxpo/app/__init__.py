"""The human-feedback web app: paint on the image, train one step, see the change."""
