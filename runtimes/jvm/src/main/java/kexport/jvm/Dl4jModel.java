package kexport.jvm;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.gson.stream.JsonReader;
import java.io.StringReader;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.deeplearning4j.nn.graph.ComputationGraph;
import org.deeplearning4j.nn.modelimport.keras.Hdf5Archive;
import org.deeplearning4j.nn.modelimport.keras.KerasModelImport;
import org.deeplearning4j.nn.multilayer.MultiLayerNetwork;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.factory.Nd4j;

/**
 * A Keras 2 HDF5 model imported with DL4J's KerasModelImport: a functional model becomes a
 * ComputationGraph (vertices named after the Keras layers), a Sequential one a
 * MultiLayerNetwork (one input, one output, named here from the stored Keras config).
 */
final class Dl4jModel implements Model {
    private final ComputationGraph graph;
    private final MultiLayerNetwork network;
    private final List<String> inputNames = new ArrayList<>();
    private final List<String> outputNames = new ArrayList<>();

    Dl4jModel(String path) throws Exception {
        JsonObject config;
        try (Hdf5Archive archive = new Hdf5Archive(path)) {
            // The attribute can carry bytes after the JSON (HDF5 string padding): read one value.
            JsonReader reader = new JsonReader(new StringReader(archive.readAttributeAsJson("model_config")));
            reader.setLenient(true);
            config = new JsonParser().parse(reader).getAsJsonObject();
        }
        String cls = config.get("class_name").getAsString();
        if (cls.equals("Sequential")) {
            network = KerasModelImport.importKerasSequentialModelAndWeights(path, false);
            graph = null;
            JsonArray layers = config.getAsJsonObject("config").getAsJsonArray("layers");
            JsonObject first = layers.get(0).getAsJsonObject().getAsJsonObject("config");
            JsonObject last = layers.get(layers.size() - 1).getAsJsonObject().getAsJsonObject("config");
            inputNames.add(first.get("name").getAsString());
            outputNames.add(last.get("name").getAsString());
        } else {
            graph = KerasModelImport.importKerasModelAndWeights(path, false);
            network = null;
            inputNames.addAll(graph.getConfiguration().getNetworkInputs());
            outputNames.addAll(graph.getConfiguration().getNetworkOutputs());
        }
    }

    private static List<Map<String, Object>> describe(List<String> names) {
        List<Map<String, Object>> out = new ArrayList<>();
        for (String n : names) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("name", n);
            m.put("dtype", "float32");
            out.add(m);
        }
        return out;
    }

    @Override
    public List<Map<String, Object>> inputs() {
        return describe(inputNames);
    }

    @Override
    public List<Map<String, Object>> outputs() {
        return describe(outputNames);
    }

    @Override
    public LinkedHashMap<String, Npy.Array> predict(Map<String, Npy.Array> inputs) {
        INDArray[] xs = new INDArray[inputNames.size()];
        for (int i = 0; i < xs.length; i++) {
            Npy.Array a = inputs.get(inputNames.get(i));
            if (a == null) throw new IllegalArgumentException("missing input '" + inputNames.get(i) + "'");
            xs[i] = Nd4j.create(a.toFloats(), a.shape, 'c');
        }
        INDArray[] ys = graph != null ? graph.output(false, xs) : new INDArray[] {network.output(xs[0], false)};
        LinkedHashMap<String, Npy.Array> out = new LinkedHashMap<>();
        for (int i = 0; i < ys.length; i++) {
            INDArray y = ys[i].castTo(DataType.FLOAT).dup('c');
            float[] values = y.data().asFloat();
            ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
            b.asFloatBuffer().put(values);
            out.put(outputNames.get(i), new Npy.Array("<f4", y.shape(), b));
        }
        return out;
    }

    @Override
    public void close() {
        if (graph != null) graph.close();
        if (network != null) network.close();
    }
}
