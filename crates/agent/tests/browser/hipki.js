// The HiPKI-style test page's script, in the manner of the pages written for the real HiPKI
// local server: globals, callbacks, `encodeURIComponent` on tbs and pin, `+` written `%2B` in
// the whole package, the popup bridge with its getTbs handshake, the /p11Image.bmp installation
// check read through a canvas, subjectDN split on "," and "=", dates from notAfterT, and an error
// table that shows unknown codes as hex with message and 次原因 (message2). Each hipki* function
// returns a Promise so that hipki.mjs can await it.
var hipkiAgent = "http://localhost:61161";
var errorTable = {
  "0": "成功",
  "1980760070": "PIN碼錯誤", // 0x76100006 with last_error 0xA0
  "-2147483647": "PIN碼錯誤，剩餘一次機會",
  "-2147483646": "PIN碼錯誤，剩餘兩次機會"
};

function setAgent(url) { hipkiAgent = url; }

function showResult(ret) {
  var text;
  var code = Number(ret.ret_code);
  if (code === 0) {
    text = "成功";
  } else if (code === 0x76100006 && ret.last_error === 0xA0) {
    text = errorTable["1980760070"];
  } else {
    // Codes the table does not know: hex, the component's message and the secondary reason.
    text = "錯誤代碼：0x" + (code >>> 0).toString(16).toUpperCase();
    if (ret.message) text += " " + ret.message;
    if (ret.message2) text += " 次原因:" + ret.message2;
  }
  document.getElementById("result").textContent = text;
  return text;
}

function makePackage(func, tbs, pin, extra) {
  var tbsPackage = { func: func, signatureType: "PKCS7", tbs: encodeURIComponent(tbs),
    hashAlgorithm: "SHA256", tbsEncoding: "NONE", withCardSN: "true", nonce: "" };
  if (pin !== undefined) tbsPackage.pin = encodeURIComponent(pin);
  for (var k in extra || {}) tbsPackage[k] = extra[k];
  return JSON.stringify(tbsPackage).replace(/\+/g, "%2B");
}

// The component check: /p11Image.bmp drawn on a canvas; 3 characters a pixel (blue, green,
// red), up to the first pixel whose blue is 0.
function hipkiCheck() {
  return new Promise(function (resolve) {
    var img = new Image();
    img.crossOrigin = "Anonymous";
    img.onload = function () {
      var canvas = document.getElementById("p11canvas");
      var ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      var data = ctx.getImageData(0, 0, 2000, 1).data;
      var text = "";
      for (var i = 0; i < 2000; i++) {
        if (data[i * 4 + 2] === 0) break;
        text += String.fromCharCode(data[i * 4 + 2], data[i * 4 + 1], data[i * 4]);
      }
      try {
        var info = JSON.parse(text);
        resolve({ installed: true, serverVersion: info.serverVersion, info: info, width: img.width, height: img.height });
      } catch (e) {
        resolve({ installed: false, message: "元件回應無法解讀", text: text });
      }
    };
    img.onerror = function () { resolve({ installed: false, message: "未安裝元件" }); };
    img.src = hipkiAgent + "/p11Image.bmp?" + Date.now();
  });
}

// The popup bridge: open /popupForm, wait for getTbs, post the package text, take the answer.
function hipkiPopup(data) {
  return new Promise(function (resolve) {
    var agentOrigin = new URL(hipkiAgent).origin;
    var popup = window.open(hipkiAgent + "/popupForm", "signWindow", "height=200,width=200,left=100,top=20");
    if (!popup) { resolve({ ret_code: -1, message: "popup blocked" }); return; }
    var timer = setTimeout(function () { done({ ret_code: -2, message: "未安裝客戶端程式或未啟動服務" }); }, 15000);
    function done(ret) {
      window.removeEventListener("message", receive);
      clearTimeout(timer);
      resolve(ret);
    }
    function receive(event) {
      if (event.origin != agentOrigin) return;
      var ret = JSON.parse(event.data);
      if (ret.func == "getTbs") {
        clearTimeout(timer);
        timer = setTimeout(function () { done({ ret_code: -3, message: "逾時" }); }, 15000);
        popup.postMessage(data, agentOrigin);
      } else {
        done(ret);
      }
    }
    window.addEventListener("message", receive, false);
  });
}

// Reads the signing certificate by popup and takes the subject apart as the pages do.
function hipkiGetUserCert() {
  return hipkiPopup(makePackage("GetUserCert", "", undefined, { tbs: "" })).then(function (ret) {
    showResult(ret);
    if (ret.ret_code != 0) return { ret: ret };
    var found = null;
    for (var s = 0; s < ret.slots.length && !found; s++) {
      var token = ret.slots[s].token;
      if (!token) continue;
      for (var c = 0; c < token.certs.length; c++) {
        // Usages are joined with "|"; the signing certificate has digitalSignature.
        if (token.certs[c].usage.split("|").indexOf("digitalSignature") >= 0) {
          found = { slot: ret.slots[s], cert: token.certs[c] };
          break;
        }
      }
    }
    if (!found) return { ret: ret };
    var subject = {};
    var parts = found.cert.subjectDN.split(",");
    for (var i = 0; i < parts.length; i++) {
      var kv = parts[i].split("=");
      if (kv[0] == "C" || kv[0] == "CN" || kv[0] == "serialNumber" || kv[0] == "O") subject[kv[0]] = kv[1];
    }
    var notAfter = new Date(found.cert.notAfterT * 1000);
    return {
      ret: ret,
      slotDescription: found.slot.slotDescription,
      cardSN: found.slot.token.serialNumber,
      subject: subject,
      notAfter: notAfter.getUTCFullYear() + "/" + (notAfter.getUTCMonth() + 1) + "/" + notAfter.getUTCDate(),
      notAfterT: found.cert.notAfterT,
      certb64: found.cert.certb64
    };
  });
}

function hipkiSignPopup(tbs, pin, slotDescription) {
  var data = makePackage("MakeSignature", tbs, pin, { slotDescription: slotDescription });
  return hipkiPopup(data).then(function (ret) { return { ret: ret, shown: showResult(ret) }; });
}

// IE-style direct POST of the form body, the package text as it is (its '+' already %2B).
function hipkiSignDirect(tbs, pin, slotDescription) {
  return new Promise(function (resolve) {
    var xhr = new XMLHttpRequest();
    xhr.open("POST", hipkiAgent + "/sign", true);
    xhr.setRequestHeader("Content-Type", "application/x-www-form-urlencoded");
    xhr.onload = function () {
      var ret = JSON.parse(xhr.responseText);
      resolve({ ret: ret, shown: showResult(ret) });
    };
    xhr.onerror = function () { resolve({ ret: { ret_code: -2 }, shown: "未安裝客戶端程式或未啟動服務" }); };
    xhr.send("tbsPackage=" + makePackage("MakeSignature", tbs, pin, { slotDescription: slotDescription }));
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.getElementById("status").textContent = "ready";
});
