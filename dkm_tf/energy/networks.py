"""Reference networks as Keras models, for shape-based energy estimates (weights not needed).

Keras is imported inside each function. Every builder returns an uninitialised-for-purpose
(randomly initialised) Functional model; only its shapes matter. Layer names follow the
papers so that compression info can be keyed by them.

* `lenet5_caffe`: Caffe LeNet-5: conv 5×5×20, max-pool 2, conv 5×5×50, max-pool 2, fc 500,
  fc 10 on 28×28×1; 2.293 M MACs, 431 k weights.
* `alexnet`: single-tower AlexNet with the original two-GPU grouping expressed as
  `groups=2` in conv2, conv4 and conv5 (Krizhevsky et al. 2012; Caffe "bvlc_alexnet"),
  227×227×3, LRN omitted; 724.4 M MACs (666 M conv + 58.6 M fc), 61 M weights.
* `googlenet_v1`: GoogLeNet / Inception v1 (Szegedy et al. 2015, Table 1), 224×224×3,
  LRN and auxiliary heads omitted, ending in global average pooling (no FC unless
  `classifier=True`); ≈ 1.58 G conv MACs per Table 1's "ops" column.
* `wrn_16_4`: Wide ResNet 16-4 for CIFAR (32×32×3), pre-activation blocks, conv biases as in
  the Deep k-Means code; 2,742,704 conv weights.
"""


def lenet5_caffe(num_classes=10):
    """Caffe LeNet-5 on 28×28×1 (conv1 20@5×5, pool, conv2 50@5×5, pool, ip1 500, ip2 10)."""
    import keras

    L = keras.layers
    inp = keras.Input((28, 28, 1), name="input")
    x = L.Conv2D(20, 5, name="conv1")(inp)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(50, 5, name="conv2")(x)
    x = L.MaxPooling2D(2, name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(500, activation="relu", name="ip1")(x)
    out = L.Dense(num_classes, name="ip2")(x)
    return keras.Model(inp, out, name="lenet5_caffe")


def alexnet(num_classes=1000, grouped=True):
    """Single-tower AlexNet on 227×227×3; `grouped` uses groups=2 in conv2, conv4, conv5."""
    import keras

    L = keras.layers
    g = 2 if grouped else 1
    inp = keras.Input((227, 227, 3), name="input")
    x = L.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(inp)
    x = L.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = L.Conv2D(256, 5, padding="same", groups=g, activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = L.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = L.Conv2D(384, 3, padding="same", groups=g, activation="relu", name="conv4")(x)
    x = L.Conv2D(256, 3, padding="same", groups=g, activation="relu", name="conv5")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(4096, activation="relu", name="fc6")(x)
    x = L.Dense(4096, activation="relu", name="fc7")(x)
    out = L.Dense(num_classes, name="fc8")(x)
    return keras.Model(inp, out, name="alexnet")


# (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), Szegedy et al. 2015 Table 1.
GOOGLENET_INCEPTIONS = (
    ("inception_3a", 64, 96, 128, 16, 32, 32),
    ("inception_3b", 128, 128, 192, 32, 96, 64),
    ("inception_4a", 192, 96, 208, 16, 48, 64),
    ("inception_4b", 160, 112, 224, 24, 64, 64),
    ("inception_4c", 128, 128, 256, 24, 64, 64),
    ("inception_4d", 112, 144, 288, 32, 64, 64),
    ("inception_4e", 256, 160, 320, 32, 128, 128),
    ("inception_5a", 256, 160, 320, 32, 128, 128),
    ("inception_5b", 384, 192, 384, 48, 128, 128),
)


def googlenet_v1(classifier=False, num_classes=1000):
    """GoogLeNet v1 on 224×224×3 ending in global average pooling (FC only if `classifier`)."""
    import keras

    L = keras.layers

    def conv(x, filters, k, name, strides=1):
        return L.Conv2D(filters, k, strides=strides, padding="same", activation="relu",
                        name=name)(x)

    inp = keras.Input((224, 224, 3), name="input")
    x = conv(inp, 64, 7, "conv1_7x7_s2", strides=2)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1_3x3_s2")(x)
    x = conv(x, 64, 1, "conv2_3x3_reduce")
    x = conv(x, 192, 3, "conv2_3x3")
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool2_3x3_s2")(x)
    for name, n1, n3r, n3, n5r, n5, npool in GOOGLENET_INCEPTIONS:
        if name in ("inception_4a", "inception_5a"):
            x = L.MaxPooling2D(3, strides=2, padding="same", name=f"pool_before_{name}")(x)
        b1 = conv(x, n1, 1, f"{name}_1x1")
        b2 = conv(conv(x, n3r, 1, f"{name}_3x3_reduce"), n3, 3, f"{name}_3x3")
        b3 = conv(conv(x, n5r, 1, f"{name}_5x5_reduce"), n5, 5, f"{name}_5x5")
        b4 = L.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
        b4 = conv(b4, npool, 1, f"{name}_pool_proj")
        x = L.Concatenate(name=f"{name}_output")([b1, b2, b3, b4])
    x = L.GlobalAveragePooling2D(name="pool5_gap")(x)
    if classifier:
        x = L.Dense(num_classes, name="loss3_classifier")(x)
    return keras.Model(inp, x, name="googlenet_v1")


def wrn_16_4(num_classes=10, dropout=0.3):
    """Wide ResNet 16-4 on 32×32×3 (pre-activation; conv biases as in the Deep k-Means code)."""
    import keras

    L = keras.layers

    def block(x, filters, stride, name):
        in_c = x.shape[-1]
        h = L.BatchNormalization(name=f"{name}_bn1")(x)
        h = L.ReLU(name=f"{name}_relu1")(h)
        h = L.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(h)
        h = L.Dropout(dropout, name=f"{name}_dropout")(h)
        h = L.BatchNormalization(name=f"{name}_bn2")(h)
        h = L.ReLU(name=f"{name}_relu2")(h)
        h = L.Conv2D(filters, 3, strides=stride, padding="same", name=f"{name}_conv2")(h)
        if stride != 1 or in_c != filters:
            x = L.Conv2D(filters, 1, strides=stride, name=f"{name}_shortcut")(x)
        return L.Add(name=f"{name}_add")([h, x])

    inp = keras.Input((32, 32, 3), name="input")
    x = L.Conv2D(16, 3, padding="same", name="conv1")(inp)
    for stage, (filters, stride) in enumerate(((64, 1), (128, 2), (256, 2)), start=1):
        x = block(x, filters, stride, f"layer{stage}_0")
        x = block(x, filters, 1, f"layer{stage}_1")
    x = L.BatchNormalization(name="bn_final")(x)
    x = L.ReLU(name="relu_final")(x)
    x = L.GlobalAveragePooling2D(name="avgpool")(x)
    out = L.Dense(num_classes, name="linear")(x)
    return keras.Model(inp, out, name="wrn_16_4")
