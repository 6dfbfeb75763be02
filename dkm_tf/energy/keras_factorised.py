"""Energy records of a `FactorisedConv2D` (the factorised kernel-clustered convolution),
moved out of `keras_reader` (which calls it) unchanged."""


def factorised_records(layer, name, in_shape, out_shape, common):
    """A `FactorisedConv2D` (methods.md §2.6) as the computation it runs.

    ``form="add_then_conv"``: `name/sums` (Cin -> Cout at Hi*Wi positions) and the
    `name/centroids` depthwise record (sum_j U_j channels); MACs total
    `kernel_flops(...).add_then_conv_total`. Conv-then-add:

    Centroid convolutions: input channel i convolved with its U_i distinct centroids, one
    depthwise record per distinct U_i (`name/centroids`, `name/centroids_u{U}`); scaled
    accumulation: a dense record `name/accumulate` of Cin -> Cout at Ho*Wo positions (one
    MAC per (i, j) kernel; its Cin*Cout weights are the scales). MACs total
    `kernel_flops(...).conv_then_add_total`. The centroid taps are charged as the k*k*sum U_i
    taps the channels read, not as a K*k*k codebook plus indices.
    """
    from dkm_tf.core.kernel_flops import distinct_counts
    from dkm_tf.energy import shapes as sh

    ihw, ohw = tuple(in_shape[1:3]), tuple(out_shape[1:3])
    if getattr(layer, "form", "conv_then_add") == "add_then_conv":
        # the scaled input sums (Cin -> Cout at the input positions), then output j's
        # U_j sums each convolved with its centroid: add_then_conv_total MACs
        u_out = distinct_counts(layer.indices, axis=0)
        records = [sh.dense_shape(f"{name}/sums", in_features=layer.input_channels,
                                  units=layer.filters, positions=ihw[0] * ihw[1], **common)]
        n = int(u_out.sum())
        records.append(sh.conv_shape(f"{name}/centroids", in_hw=ihw, in_c=n, out_hw=ohw,
                                     out_c=n, kernel=layer.kernel_size, strides=layer.strides,
                                     groups=n, **common))
        return records
    u_in = distinct_counts(layer.indices, axis=1)
    values = sorted(set(u_in.tolist()))
    records = [sh.conv_shape(f"{name}/centroids" + (f"_u{u}" if len(values) > 1 else ""),
                             in_hw=ihw, in_c=int((u_in == u).sum()), out_hw=ohw,
                             out_c=int((u_in == u).sum()) * u, kernel=layer.kernel_size,
                             strides=layer.strides, groups=int((u_in == u).sum()), **common)
               for u in values]
    records.append(sh.dense_shape(f"{name}/accumulate", in_features=layer.input_channels,
                                  units=layer.filters, positions=ohw[0] * ohw[1], **common))
    return records
