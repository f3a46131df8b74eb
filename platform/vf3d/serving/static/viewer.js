/*
 * vf3d viewer: a binary glTF 2.0 (GLB) reader and a small WebGL mesh viewer. No dependencies,
 * no build step. Exposes window.vf3d = { parseGlb, buildGeometry, Viewer }.
 *
 * parseGlb(arrayBuffer)   -> { json, bin }           header, JSON chunk, BIN chunk
 * buildGeometry(gltf)     -> { positions, normals, colors, indices, vertexCount, faceCount }
 *     every triangle primitive of every mesh in the default scene, node transforms applied,
 *     merged into one indexed triangle list with area-weighted vertex normals and RGBA colours
 * new Viewer(canvas)      WebGL view that frames a geometry and turns it about +Y (glTF is +Y up);
 *     drag to orbit, wheel to zoom
 */
"use strict";
(function (global) {
  const GLB_MAGIC = 0x46546c67; // "glTF"
  const CHUNK_JSON = 0x4e4f534a; // "JSON"
  const CHUNK_BIN = 0x004e4942; // "BIN\0"
  // componentType -> [typed array, bytes per component, DataView getter, scale when normalized]
  const COMPONENTS = {
    5120: [Int8Array, 1, "getInt8", 1 / 127],
    5121: [Uint8Array, 1, "getUint8", 1 / 255],
    5122: [Int16Array, 2, "getInt16", 1 / 32767],
    5123: [Uint16Array, 2, "getUint16", 1 / 65535],
    5125: [Uint32Array, 4, "getUint32", 1 / 4294967295],
    5126: [Float32Array, 4, "getFloat32", 1],
  };
  const TYPE_SIZES = { SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4, MAT2: 4, MAT3: 9, MAT4: 16 };
  const TRIANGLES = 4, TRIANGLE_STRIP = 5, TRIANGLE_FAN = 6;

  function parseGlb(arrayBuffer) {
    const data = new DataView(arrayBuffer);
    if (arrayBuffer.byteLength < 20 || data.getUint32(0, true) !== GLB_MAGIC) {
      throw new Error("the result is not a GLB file");
    }
    const version = data.getUint32(4, true);
    if (version !== 2) throw new Error(`unsupported glTF version ${version}`);
    const length = Math.min(data.getUint32(8, true), arrayBuffer.byteLength);
    let json = null, bin = null;
    for (let offset = 12; offset + 8 <= length;) {
      const chunkLength = data.getUint32(offset, true);
      const chunkType = data.getUint32(offset + 4, true);
      const start = offset + 8;
      if (start + chunkLength > length) throw new Error("truncated GLB chunk");
      if (chunkType === CHUNK_JSON && json === null) {
        json = JSON.parse(new TextDecoder().decode(new Uint8Array(arrayBuffer, start, chunkLength)));
      } else if (chunkType === CHUNK_BIN && bin === null) {
        bin = new Uint8Array(arrayBuffer, start, chunkLength);
      }
      offset = start + chunkLength + ((4 - (chunkLength % 4)) % 4); // chunks are 4-byte aligned
    }
    if (json === null) throw new Error("GLB has no JSON chunk");
    return { json, bin: bin || new Uint8Array(0) };
  }

  /* Accessor `index` as a flat array of count * components values: Float32Array (normalized
   * integers scaled to [0, 1] or [-1, 1]) when asFloat, else the raw integers in a Uint32Array. */
  function readAccessor(gltf, index, asFloat) {
    const accessor = gltf.json.accessors[index];
    if (!accessor) throw new Error(`missing accessor ${index}`);
    if (accessor.sparse) throw new Error("sparse accessors are not supported");
    const component = COMPONENTS[accessor.componentType];
    const size = TYPE_SIZES[accessor.type];
    if (!component || !size) throw new Error(`unsupported accessor ${accessor.componentType} ${accessor.type}`);
    const [TypedArray, bytes, getter, normScale] = component;
    const count = accessor.count, total = count * size;
    const out = asFloat ? new Float32Array(total) : new Uint32Array(total);
    if (accessor.bufferView === undefined) return out; // no data means all zeros (glTF 2.0 5.1.1)
    const view = gltf.json.bufferViews[accessor.bufferView];
    if ((view.buffer || 0) !== 0) throw new Error("external buffers are not supported in a GLB viewer");
    if ((view.byteOffset || 0) + view.byteLength > gltf.bin.byteLength) {
      throw new Error(`bufferView ${accessor.bufferView} runs past the GLB's binary chunk`);
    }
    const elementBytes = size * bytes;
    const stride = view.byteStride || elementBytes;
    const start = (view.byteOffset || 0) + (accessor.byteOffset || 0);
    if (count > 0 && start + stride * (count - 1) + elementBytes > (view.byteOffset || 0) + view.byteLength) {
      throw new Error(`accessor ${index} runs past its bufferView`);
    }
    const scale = asFloat && accessor.normalized ? normScale : 1;
    const absolute = gltf.bin.byteOffset + start;
    if (stride === elementBytes && absolute % bytes === 0) {
      // Tightly packed and aligned: read through a typed view, no per-value decoding.
      const source = new TypedArray(gltf.bin.buffer, absolute, total);
      if (scale === 1) out.set(source);
      else for (let i = 0; i < total; i++) out[i] = source[i] * scale;
    } else {
      const data = new DataView(gltf.bin.buffer, gltf.bin.byteOffset, gltf.bin.byteLength);
      for (let i = 0; i < count; i++) {
        for (let c = 0; c < size; c++) {
          out[i * size + c] = data[getter](start + i * stride + c * bytes, true) * scale;
        }
      }
    }
    if (scale !== 1 && (TypedArray === Int8Array || TypedArray === Int16Array)) {
      for (let i = 0; i < total; i++) out[i] = Math.max(out[i], -1); // signed normalized: -128 -> -1
    }
    return out;
  }

  // ---- 4x4 column-major matrices (glTF's and WebGL's layout) ----
  function identity() { return new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]); }

  function multiply(a, b) {
    const out = new Float32Array(16);
    for (let col = 0; col < 4; col++) {
      for (let row = 0; row < 4; row++) {
        let sum = 0;
        for (let k = 0; k < 4; k++) sum += a[k * 4 + row] * b[col * 4 + k];
        out[col * 4 + row] = sum;
      }
    }
    return out;
  }

  /* A node's local matrix: `matrix` when present, else translation * rotation * scale. */
  function localMatrix(node) {
    if (node.matrix) return new Float32Array(node.matrix);
    const [tx, ty, tz] = node.translation || [0, 0, 0];
    const [x, y, z, w] = node.rotation || [0, 0, 0, 1];
    const [sx, sy, sz] = node.scale || [1, 1, 1];
    return new Float32Array([
      (1 - 2 * (y * y + z * z)) * sx, 2 * (x * y + z * w) * sx, 2 * (x * z - y * w) * sx, 0,
      2 * (x * y - z * w) * sy, (1 - 2 * (x * x + z * z)) * sy, 2 * (y * z + x * w) * sy, 0,
      2 * (x * z + y * w) * sz, 2 * (y * z - x * w) * sz, (1 - 2 * (x * x + y * y)) * sz, 0,
      tx, ty, tz, 1,
    ]);
  }

  function rotationX(angle) {
    const c = Math.cos(angle), s = Math.sin(angle);
    return new Float32Array([1, 0, 0, 0, 0, c, s, 0, 0, -s, c, 0, 0, 0, 0, 1]);
  }

  function rotationY(angle) {
    const c = Math.cos(angle), s = Math.sin(angle);
    return new Float32Array([c, 0, -s, 0, 0, 1, 0, 0, s, 0, c, 0, 0, 0, 0, 1]);
  }

  function perspective(fovY, aspect, near, far) {
    const f = 1 / Math.tan(fovY / 2), range = 1 / (near - far);
    return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * range, -1,
      0, 0, 2 * far * near * range, 0]);
  }

  /* Triangle corner indices of one primitive, strips and fans unrolled. */
  function triangleIndices(mode, indices) {
    if (mode === TRIANGLES) return indices.subarray(0, indices.length - (indices.length % 3));
    const triangles = Math.max(indices.length - 2, 0);
    const out = new Uint32Array(triangles * 3);
    for (let i = 0; i < triangles; i++) {
      if (mode === TRIANGLE_FAN) out.set([indices[0], indices[i + 1], indices[i + 2]], i * 3);
      else if (i % 2 === 0) out.set([indices[i], indices[i + 1], indices[i + 2]], i * 3);
      else out.set([indices[i + 1], indices[i], indices[i + 2]], i * 3); // keep strip winding
    }
    return out;
  }

  function primitivePart(gltf, primitive, matrix) {
    const positionIndex = primitive.attributes && primitive.attributes.POSITION;
    if (positionIndex === undefined) return null;
    const local = readAccessor(gltf, positionIndex, true);
    const vertexCount = local.length / 3;
    const positions = new Float32Array(local.length);
    for (let v = 0; v < vertexCount; v++) {
      const x = local[v * 3], y = local[v * 3 + 1], z = local[v * 3 + 2];
      for (let r = 0; r < 3; r++) {
        positions[v * 3 + r] = matrix[r] * x + matrix[4 + r] * y + matrix[8 + r] * z + matrix[12 + r];
      }
    }
    // COLOR_0 multiplies the material's base colour (glTF 2.0 3.9.2); either may be absent.
    const material = primitive.material !== undefined && gltf.json.materials
      ? gltf.json.materials[primitive.material] : null;
    const base = (material && material.pbrMetallicRoughness &&
      material.pbrMetallicRoughness.baseColorFactor) || (primitive.attributes.COLOR_0 === undefined
      ? [0.78, 0.78, 0.78, 1] : [1, 1, 1, 1]);
    const colors = new Float32Array(vertexCount * 4);
    if (primitive.attributes.COLOR_0 !== undefined) {
      const source = readAccessor(gltf, primitive.attributes.COLOR_0, true);
      const channels = source.length / vertexCount; // 3 (RGB) or 4 (RGBA)
      for (let v = 0; v < vertexCount; v++) {
        for (let c = 0; c < 4; c++) {
          colors[v * 4 + c] = base[c] * (c < channels ? source[v * channels + c] : 1);
        }
      }
    } else {
      for (let v = 0; v < vertexCount; v++) colors.set(base, v * 4);
    }
    let indices;
    if (primitive.indices !== undefined) {
      indices = readAccessor(gltf, primitive.indices, false);
    } else {
      indices = new Uint32Array(vertexCount);
      for (let i = 0; i < vertexCount; i++) indices[i] = i;
    }
    indices = triangleIndices(primitive.mode === undefined ? TRIANGLES : primitive.mode, indices);
    for (let i = 0; i < indices.length; i++) {
      if (indices[i] >= vertexCount) throw new Error("a triangle index is out of range");
    }
    return { positions, colors, indices };
  }

  function vertexNormals(positions, indices) {
    const normals = new Float32Array(positions.length);
    for (let t = 0; t < indices.length; t += 3) {
      const a = indices[t] * 3, b = indices[t + 1] * 3, c = indices[t + 2] * 3;
      const ux = positions[b] - positions[a], uy = positions[b + 1] - positions[a + 1], uz = positions[b + 2] - positions[a + 2];
      const vx = positions[c] - positions[a], vy = positions[c + 1] - positions[a + 1], vz = positions[c + 2] - positions[a + 2];
      // The unnormalised cross product weights each face by its area.
      const nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      normals[a] += nx; normals[a + 1] += ny; normals[a + 2] += nz;
      normals[b] += nx; normals[b + 1] += ny; normals[b + 2] += nz;
      normals[c] += nx; normals[c + 1] += ny; normals[c + 2] += nz;
    }
    for (let i = 0; i < normals.length; i += 3) {
      const length = Math.hypot(normals[i], normals[i + 1], normals[i + 2]) || 1;
      normals[i] /= length; normals[i + 1] /= length; normals[i + 2] /= length;
    }
    return normals;
  }

  function buildGeometry(gltf) {
    const json = gltf.json, nodes = json.nodes || [], meshes = json.meshes || [];
    const parts = [];
    const addMesh = (meshIndex, matrix) => {
      for (const primitive of (meshes[meshIndex] || { primitives: [] }).primitives) {
        const mode = primitive.mode === undefined ? TRIANGLES : primitive.mode;
        if (mode !== TRIANGLES && mode !== TRIANGLE_STRIP && mode !== TRIANGLE_FAN) continue;
        const part = primitivePart(gltf, primitive, matrix);
        if (part) parts.push(part);
      }
    };
    const visit = (nodeIndex, parent, depth) => {
      const node = nodes[nodeIndex];
      if (!node || depth > 64) return;
      const matrix = multiply(parent, localMatrix(node));
      if (node.mesh !== undefined) addMesh(node.mesh, matrix);
      for (const child of node.children || []) visit(child, matrix, depth + 1);
    };
    const scene = json.scenes && json.scenes[json.scene || 0];
    if (scene) {
      for (const root of scene.nodes || []) visit(root, identity(), 0);
    } else if (nodes.length) {
      const children = new Set(nodes.flatMap((node) => node.children || []));
      nodes.forEach((_, i) => { if (!children.has(i)) visit(i, identity(), 0); });
    } else {
      meshes.forEach((_, i) => addMesh(i, identity()));
    }

    const vertexCount = parts.reduce((sum, part) => sum + part.positions.length / 3, 0);
    const indexCount = parts.reduce((sum, part) => sum + part.indices.length, 0);
    if (indexCount === 0) throw new Error("the model has no triangles");
    const positions = new Float32Array(vertexCount * 3), colors = new Float32Array(vertexCount * 4);
    const indices = new Uint32Array(indexCount);
    let vertexBase = 0, indexBase = 0;
    for (const part of parts) {
      positions.set(part.positions, vertexBase * 3);
      colors.set(part.colors, vertexBase * 4);
      for (let i = 0; i < part.indices.length; i++) indices[indexBase + i] = part.indices[i] + vertexBase;
      vertexBase += part.positions.length / 3;
      indexBase += part.indices.length;
    }
    const normals = vertexNormals(positions, indices);
    return { positions, normals, colors, indices, vertexCount, faceCount: indexCount / 3 };
  }

  const VERTEX_SHADER = `
    attribute vec3 a_position;
    attribute vec3 a_normal;
    attribute vec4 a_color;
    uniform mat4 u_modelView;
    uniform mat4 u_projection;
    varying vec3 v_normal;
    varying vec4 v_color;
    void main() {
      v_normal = (u_modelView * vec4(a_normal, 0.0)).xyz;  // rotation and uniform scale only
      v_color = a_color;
      gl_Position = u_projection * u_modelView * vec4(a_position, 1.0);
    }`;
  const FRAGMENT_SHADER = `
    precision mediump float;
    varying vec3 v_normal;
    varying vec4 v_color;
    void main() {
      vec3 n = normalize(v_normal);
      if (!gl_FrontFacing) n = -n;  // light both sides of open surfaces
      float key = max(dot(n, normalize(vec3(0.45, 0.7, 0.55))), 0.0);
      float fill = max(dot(n, normalize(vec3(-0.6, -0.25, 0.35))), 0.0);
      gl_FragColor = vec4(v_color.rgb * (0.3 + 0.65 * key + 0.25 * fill), 1.0);
    }`;
  const BACKGROUND = [0.114, 0.133, 0.173, 1]; // #1d222c, the page's viewer colour
  const FOV_Y = (35 * Math.PI) / 180;
  const SPIN_RADIANS_PER_SECOND = 0.6;
  const RESUME_SPIN_AFTER_MS = 2500;

  class Viewer {
    constructor(canvas) {
      const attributes = { antialias: true, preserveDrawingBuffer: true };
      const gl = canvas.getContext("webgl2", attributes) || canvas.getContext("webgl", attributes);
      if (!gl) throw new Error("WebGL is not available in this browser");
      if (!(typeof WebGL2RenderingContext !== "undefined" && gl instanceof WebGL2RenderingContext) &&
          !gl.getExtension("OES_element_index_uint")) {
        throw new Error("this browser's WebGL lacks 32-bit indices");
      }
      this.canvas = canvas;
      this.gl = gl;
      this.program = this._program();
      this.buffers = null;
      this.yaw = 0.6;
      this.pitch = 0.35;
      this.zoom = 1;
      this.lastInteraction = -Infinity;
      this.lastFrame = null;
      this._listen();
      this._resize();
      this._draw();
    }

    /* Upload a geometry from buildGeometry and start turning it. */
    show(geometry) {
      const gl = this.gl;
      this._release();
      const buffer = (target, data) => {
        const handle = gl.createBuffer();
        gl.bindBuffer(target, handle);
        gl.bufferData(target, data, gl.STATIC_DRAW);
        return handle;
      };
      this.buffers = {
        position: buffer(gl.ARRAY_BUFFER, geometry.positions),
        normal: buffer(gl.ARRAY_BUFFER, geometry.normals),
        color: buffer(gl.ARRAY_BUFFER, geometry.colors),
        index: buffer(gl.ELEMENT_ARRAY_BUFFER, geometry.indices),
        count: geometry.indices.length,
      };
      // Frame the bounding box: centre it and scale its half-diagonal to 1.
      const min = [Infinity, Infinity, Infinity], max = [-Infinity, -Infinity, -Infinity];
      for (let i = 0; i < geometry.positions.length; i += 3) {
        for (let a = 0; a < 3; a++) {
          min[a] = Math.min(min[a], geometry.positions[i + a]);
          max[a] = Math.max(max[a], geometry.positions[i + a]);
        }
      }
      const radius = Math.hypot(max[0] - min[0], max[1] - min[1], max[2] - min[2]) / 2 || 1;
      const s = 1 / radius;
      this.framing = new Float32Array([s, 0, 0, 0, 0, s, 0, 0, 0, 0, s, 0,
        -s * (min[0] + max[0]) / 2, -s * (min[1] + max[1]) / 2, -s * (min[2] + max[2]) / 2, 1]);
      this.zoom = 1;
      if (!this.running) {
        this.running = true;
        requestAnimationFrame((time) => this._frame(time));
      }
    }

    _program() {
      const gl = this.gl;
      const compile = (type, source) => {
        const shader = gl.createShader(type);
        gl.shaderSource(shader, source);
        gl.compileShader(shader);
        if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
        return shader;
      };
      const program = gl.createProgram();
      gl.attachShader(program, compile(gl.VERTEX_SHADER, VERTEX_SHADER));
      gl.attachShader(program, compile(gl.FRAGMENT_SHADER, FRAGMENT_SHADER));
      gl.linkProgram(program);
      if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
      return {
        handle: program,
        position: gl.getAttribLocation(program, "a_position"),
        normal: gl.getAttribLocation(program, "a_normal"),
        color: gl.getAttribLocation(program, "a_color"),
        modelView: gl.getUniformLocation(program, "u_modelView"),
        projection: gl.getUniformLocation(program, "u_projection"),
      };
    }

    _release() {
      if (!this.buffers) return;
      for (const name of ["position", "normal", "color", "index"]) this.gl.deleteBuffer(this.buffers[name]);
      this.buffers = null;
    }

    _listen() {
      const canvas = this.canvas;
      let drag = null;
      canvas.addEventListener("pointerdown", (event) => {
        drag = { x: event.clientX, y: event.clientY };
        canvas.setPointerCapture(event.pointerId);
      });
      canvas.addEventListener("pointermove", (event) => {
        if (!drag) return;
        this.yaw += (event.clientX - drag.x) * 0.01;
        this.pitch = Math.max(-1.5, Math.min(1.5, this.pitch + (event.clientY - drag.y) * 0.01));
        drag = { x: event.clientX, y: event.clientY };
        this.lastInteraction = performance.now();
      });
      const stop = () => { drag = null; };
      canvas.addEventListener("pointerup", stop);
      canvas.addEventListener("pointercancel", stop);
      canvas.addEventListener("wheel", (event) => {
        if (!this.buffers) return;
        event.preventDefault();
        this.zoom = Math.max(0.4, Math.min(3, this.zoom * Math.exp(event.deltaY * 0.001)));
        this.lastInteraction = performance.now();
      }, { passive: false });
      new ResizeObserver(() => { this._resize(); this._draw(); }).observe(canvas);
    }

    _resize() {
      const ratio = window.devicePixelRatio || 1;
      const width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
      const height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
      if (this.canvas.width !== width || this.canvas.height !== height) {
        this.canvas.width = width;
        this.canvas.height = height;
      }
    }

    _frame(time) {
      const seconds = this.lastFrame === null ? 0 : Math.min((time - this.lastFrame) / 1000, 0.1);
      this.lastFrame = time;
      if (time - this.lastInteraction > RESUME_SPIN_AFTER_MS) this.yaw += seconds * SPIN_RADIANS_PER_SECOND;
      this._draw();
      requestAnimationFrame((next) => this._frame(next));
    }

    _draw() {
      const gl = this.gl, program = this.program;
      gl.viewport(0, 0, this.canvas.width, this.canvas.height);
      gl.clearColor(...BACKGROUND);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      if (!this.buffers) return;
      // A unit sphere fills the view at distance 1 / sin(fov / 2); keep a margin.
      const distance = (1.08 / Math.sin(FOV_Y / 2)) * this.zoom;
      const aspect = this.canvas.width / this.canvas.height;
      const fit = aspect < 1 ? 1 / aspect : 1; // portrait canvases: fit the width instead
      const view = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, -distance * fit, 1]);
      const modelView = multiply(view, multiply(rotationX(this.pitch), multiply(rotationY(this.yaw), this.framing)));
      const far = distance * fit + 2;
      gl.enable(gl.DEPTH_TEST);
      gl.useProgram(program.handle);
      gl.uniformMatrix4fv(program.modelView, false, modelView);
      gl.uniformMatrix4fv(program.projection, false, perspective(FOV_Y, aspect, Math.max(far - 4, 0.01), far));
      const attribute = (location, buffer, size) => {
        gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
        gl.enableVertexAttribArray(location);
        gl.vertexAttribPointer(location, size, gl.FLOAT, false, 0, 0);
      };
      attribute(program.position, this.buffers.position, 3);
      attribute(program.normal, this.buffers.normal, 3);
      attribute(program.color, this.buffers.color, 4);
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.buffers.index);
      gl.drawElements(gl.TRIANGLES, this.buffers.count, gl.UNSIGNED_INT, 0);
    }
  }

  global.vf3d = { parseGlb, buildGeometry, Viewer };
})(window);
