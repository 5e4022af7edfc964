"""The kubelet DRA plugin: ResourceSlices (pure), prepare/unprepare, CDI, checkpoint.

Layers inside: `inventory` reads the node through the GPU seam into frozen values;
`devices` and `order` turn them into the devices and counter sets to publish (pure);
`slices` packs those into ResourceSlices within the API's limits and works out the fewest
writes (pure); `publisher` performs those writes; `claims`, `cdi`, `checkpoint` and `prepare`
make allocated devices usable; `server` serves the kubelet's gRPC APIs.
"""
